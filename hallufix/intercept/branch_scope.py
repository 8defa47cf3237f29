"""The interceptor's per-forward state for a separately run branch, swapped in around each of its forwards.

A run's :class:`~hallufix.intercept.install.Interceptor` is installed once around ``generate``: its module hooks
and the hallufix attention function read the interceptor's current state (``table``, ``plans``, ``layout``,
``forward``, the step counter, ``static_gains``, ``finished_layers``, ``weights``, the ``forward_start`` caller).
:class:`BranchHooks` holds that state for one branch of one batch: the run's hook table restricted to the branch's
selected methods (a :class:`~hallufix.intercept.dispatch.HookTable` whose callers call only those methods), its own
attention plans, its layout, its phase and step, its static gains and its own weight folds. :func:`scoped` swaps
it in for one branch forward and the main state back afterwards, so:

* a branch forward looks to every hook like a forward over the branch's rows (``event.layout`` is the branch's
  :class:`~hallufix.intercept.branch.SeparateLayout`, ``forward.phase`` its own prefill / decode);
* only the selected methods' hooks run (layer-input / MLP / lens hooks find their callers on the main table's
  layer plans, whose ``callers`` are swapped for the branch table's; attention reads ``plans``);
* the main forward's state (its step, its released layers, its static gains, its folded ``o_proj`` weights) is
  exactly as it was after the swap back: main folds are unfolded for the branch forward (pointer swaps, bit-exact)
  and the branch's own folds, made at its prefill, are applied only inside its forwards;
* each selected method keeps its own state for the branch: the method object's attributes (``__dict__``) are
  swapped for the branch's copy, taken when the branch was set up (after ``hallufix_batch_start``, before the
  main prefill; containers copied one level deep, tensors shared until reassigned), so what a method computes at
  the branch's prefill (CLVA's anchors) serves the branch's decode steps and never the main rows'.
"""
from __future__ import annotations

from contextlib import contextmanager

from hallufix.intercept import strict
from hallufix.intercept.dispatch import ATTENTION_KINDS, HookTable
from hallufix.intercept.weights import WeightFolds


class BranchHooks:
    """One separately run branch's interceptor state.

    :param ic: the run's installed interceptor. :param methods: the run's active methods (``instances``,
    ``order``). :param selected: the names of the methods whose hooks apply to the branch. :param layout: the
    branch's layout."""

    def __init__(self, ic, methods, selected: list[str], layout):
        self.ic, self.layout = ic, layout
        keep = {inst for inst, name in zip(methods.instances, methods.order) if name in selected}
        main = ic.table
        self.all_hooks = len(keep) == len(methods.instances)
        self.table = main if self.all_hooks else \
            HookTable(main.pm, {inst: (pts if inst in keep else []) for inst, pts in main.declared.items()})
        layers = ic.adapter.decoder_layers(ic.model)
        attention = bool(main.kinds() & ATTENTION_KINDS)  # the hallufix attention function is installed
        self.plans = {phase: {id(layers[i].self_attn): plan for i, plan in self.table.attention_layers(phase).items()}
                      if attention else {} for phase in ("prefill", "decode")}
        self.forward_start = ic._forward_start if self.all_hooks else strict.wrap(main.pm.subset_hook_caller(
            "hallufix_forward_start", remove_plugins=[x for x in methods.instances if x not in keep]))
        self.forward, self.step = None, 0
        self.static_gains: dict = {}
        self.finished_layers: set = set()
        self.weights = WeightFolds()
        self.folded: list = []  # [(param, branch-folded tensor)] between the branch's forwards
        #: per selected method object, its attributes while a branch forward runs
        self.states = {inst: _fork(vars(inst)) for inst in keep if hasattr(inst, "__dict__")}

    def layer_callers(self) -> dict:
        """``{layer: callers}`` to put on the main table's layer plans during a branch forward."""
        mine = self.table.layers
        return {i: (mine[i].callers if i in mine else {}) for i in self.ic.table.layers}


def _fork(state: dict) -> dict:
    """A copy of a method's ``__dict__``: dicts, lists and sets copied one level deep, everything else shared."""
    return {k: (type(v)(v) if type(v) in (dict, list, set) else v) for k, v in state.items()}


_STATE = ("table", "plans", "layout", "forward", "_step", "static_gains", "finished_layers", "_forward_start",
          "weights")


def _unfold(folds: WeightFolds) -> list:
    """Point every parameter ``folds`` edited back at its original tensor; returns ``[(param, folded tensor)]``."""
    current = {}
    for param, _ in folds._saved:
        current.setdefault(id(param), (param, param.data))
    for param, original in reversed(folds._saved):
        param.data = original
    return list(current.values())


def _refold(saved: list) -> None:
    for param, data in saved:
        param.data = data


@contextmanager
def scoped(bh: BranchHooks):
    """Make ``bh.ic`` serve one branch forward with ``bh``'s state; restore the main state afterwards."""
    ic = bh.ic
    main_table = ic.table
    saved = {k: getattr(ic, k) for k in _STATE}
    main_folded = _unfold(ic.weights)
    _refold(bh.folded)
    callers = None
    if not bh.all_hooks:
        callers = {i: plan.callers for i, plan in main_table.layers.items()}
        for i, c in bh.layer_callers().items():
            main_table.layers[i].callers = c
    main_states = {inst: inst.__dict__ for inst in bh.states}
    for inst, state in bh.states.items():
        inst.__dict__ = state
    ic.table, ic.plans, ic.layout, ic.forward, ic._step = bh.table, bh.plans, bh.layout, bh.forward, bh.step
    ic.static_gains, ic.finished_layers, ic._forward_start, ic.weights = (bh.static_gains, bh.finished_layers,
                                                                          bh.forward_start, bh.weights)
    try:
        yield bh
    finally:
        bh.forward, bh.step = ic.forward, ic._step
        bh.folded = _unfold(bh.weights)
        for inst, state in main_states.items():
            bh.states[inst] = inst.__dict__
            inst.__dict__ = state
        for k, v in saved.items():
            setattr(ic, k, v)
        if callers is not None:
            for i, c in callers.items():
                main_table.layers[i].callers = c
        _refold(main_folded)
