"""The typed facade over pluggy for per-layer hooks: one pre-resolved caller per (kind, layer, phase).

Under strict device mode (:mod:`hallufix.intercept.strict`, for tests) the callers run their hooks inside the
checking mode; otherwise they are pluggy's own callers, unwrapped.

Resolving once per run means a layer no method declared costs a dict miss, and a declared layer calls only the
methods that declared it, in typed order (pluggy calls last-registered first; the plugin manager registers the
active methods in reverse, see :mod:`hallufix.plugins`).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import pluggy

from hallufix.intercept import strict
from hallufix.points import KINDS, PHASES, SUBMODEL_KINDS, HookPoint, hook_name

#: kind -> the hookspec that receives it (``hallufix_<kind>``, see :mod:`hallufix.points`)
HOOK_OF_KIND = {kind: hook_name(kind) for kind in KINDS}
ATTENTION_KINDS = frozenset({"attn_kv", "attn_bias", "attn_probs", "attn_heads", "attn_transform"})


@dataclass(frozen=True)
class BiasSlot:
    """Bias hooks called together at a layer: ``caller`` (pluggy subset caller); ``owner`` the one method behind
    it when ``per_forward`` (its terms are then computed once per forward, in that method's per-forward cache
    entry, and reused by its other layers), else ``None``."""

    caller: Any
    owner: object = None
    per_forward: bool = False


@dataclass
class PhaseWork:
    """A layer's attention work in one phase; what the attention function acts on.

    ``kv`` / ``probs`` / ``heads`` / ``transform``: callers or ``None``; ``bias``: the slots in typed order;
    ``probe_rows``: the row kinds to materialise (``last``, ``text``, ``all``); ``transform_rows``: the row kinds
    of the score transforms (``last``, ``text``; :mod:`~hallufix.intercept.transform`); ``static``: the caller of the ``static_gains`` heads
    points (prefill only); ``carries_static``: at decode, the layer applies gains its static points set at
    prefill; ``fold``: every static point at this layer allows folding into ``o_proj``."""

    kv: Any = None
    bias: tuple = ()
    probe_rows: frozenset = frozenset()
    probs: Any = None
    heads: Any = None
    static: Any = None
    carries_static: bool = False
    fold: bool = False
    transform: Any = None
    transform_rows: frozenset = frozenset()

    @property
    def heads_only(self) -> bool:
        """Only per-head work (plain or static): the fused kernel runs, then the head outputs are edited."""
        return self.kv is None and not self.bias and not self.probe_rows and self.transform is None

    @property
    def gains_only(self) -> bool:
        """A decode step whose only work is applying the gains static points set at prefill."""
        return self.carries_static and self.heads is None and self.heads_only

    @property
    def empty(self) -> bool:
        return self.heads_only and self.heads is None and self.static is None and not self.carries_static


@dataclass
class LayerPlan:
    """What runs at one decoder layer: ``work`` per phase (:class:`PhaseWork`), the combined ``callers`` by
    ``(kind, phase)`` (layer-input hooks; every method of the kind at the layer) and canonical ``names`` by kind."""

    layer: int
    callers: dict = field(default_factory=dict)  # (kind, phase) -> pluggy caller
    names: dict = field(default_factory=dict)  # kind -> canonical name
    work: dict = field(default_factory=lambda: {ph: PhaseWork() for ph in PHASES})


class HookTable:
    """Pre-resolved callers for a run's declarations.

    :param pm: the run-scoped plugin manager (active methods registered).
    :param declared: ``{plugin_object: [HookPoint, ...]}`` for the active methods.
    """

    def __init__(self, pm: pluggy.PluginManager, declared: dict[object, list[HookPoint]]):
        self.pm, self.declared = pm, declared
        self.points: list[HookPoint] = [p for pts in declared.values() for p in pts]
        self.layers: dict[int, LayerPlan] = {}
        self.global_callers: dict[str, object] = {}
        #: ``{(kind, sub-model layer, phase): caller}`` for :data:`~hallufix.points.SUBMODEL_KINDS` (the Q-Former)
        self.submodel_callers: dict[tuple, object] = {}
        for plugin, pts in declared.items():
            for p in pts:
                hook = HOOK_OF_KIND[p.kind]
                if plugin not in {i.plugin for i in getattr(pm.hook, hook).get_hookimpls()}:
                    name = getattr(plugin, "name", type(plugin).__name__)
                    raise ValueError(f"method '{name}' declared {p.name} but does not implement {hook}")
                if p.kind == "attn_heads" and p.static_gains and p.phases != PHASES:
                    raise ValueError(f"{p.name}: static_gains hold for the whole generation; declare it in both "
                                     f"phases (the hook runs at prefill only)")
        #: (kind, layer, phase) -> [(plugin, point), ...] in typed order
        owners: dict[tuple, list[tuple[object, HookPoint]]] = defaultdict(list)
        rows: dict[tuple, set] = defaultdict(set)  # (layer, phase) -> probe row kinds
        t_rows: dict[tuple, set] = defaultdict(set)  # (layer, phase) -> score-transform row kinds
        for plugin, pts in declared.items():
            for p in pts:
                for phase in p.phases:
                    kind = "static" if p.kind == "attn_heads" and p.static_gains else p.kind
                    if phase == "decode" and kind == "static":
                        continue  # applied by the core from the gains set at prefill
                    group = owners[(kind, p.layer, phase)]
                    if all(w is not plugin for w, _ in group):
                        group.append((plugin, p))
                    if kind == "attn_probs":
                        rows[(p.layer, phase)].add(p.rows)  # every declared row kind, of every point
                    if kind == "attn_transform":
                        t_rows[(p.layer, phase)].add(p.rows)
        for (kind, layer, phase), who in owners.items():
            caller = self._caller(kind, [w for w, _ in who])
            if layer is None:
                self.global_callers[(kind, phase)] = caller
                continue
            if kind in SUBMODEL_KINDS:
                self.submodel_callers[(kind, layer, phase)] = caller
                continue
            plan = self._plan(layer)
            if kind != "static":
                plan.callers[(kind, phase)] = caller
            work = plan.work[phase]
            if kind == "attn_bias":
                shared = [w for w, p in who if p.per_forward]
                slots = tuple(BiasSlot(self._caller(kind, [w]), w, True) if w in shared else
                              BiasSlot(self._caller(kind, [w])) for w, _ in who) if shared else (BiasSlot(caller),)
                plan.work[phase] = replace(work, bias=slots)
            elif kind == "attn_probs":
                plan.work[phase] = replace(work, probs=caller, probe_rows=frozenset(rows[(layer, phase)]))
            elif kind == "attn_transform":
                plan.work[phase] = replace(work, transform=caller, transform_rows=frozenset(t_rows[(layer, phase)]))
            elif kind == "static":
                plan.work[phase] = replace(work, static=caller, fold=all(p.fold for _, p in who))
                plan.work["decode"] = replace(plan.work["decode"], carries_static=True)
            elif kind in ("attn_kv", "attn_heads"):
                plan.work[phase] = replace(work, **{kind[len("attn_"):]: caller})
        for p in self.points:
            if p.layer is not None and p.kind not in SUBMODEL_KINDS:
                self.layers[p.layer].names[p.kind] = p.name

    def _caller(self, kind: str, who: list):
        """The pluggy caller of ``kind``'s hook restricted to the methods ``who`` (typed order kept); under strict
        device mode (tests) it runs its hooks inside the checking mode."""
        hook = HOOK_OF_KIND["attn_heads" if kind == "static" else kind]
        return strict.wrap(self.pm.subset_hook_caller(hook, remove_plugins=[x for x in self.declared
                                                                            if x not in who]))

    def attention_layers(self, phase: str) -> dict[int, LayerPlan]:
        """``{layer: plan}`` of the layers with an attention-level hook (kv / bias / probs / heads) in ``phase``;
        every other layer runs transformers' own SDPA function in that phase."""
        return {i: plan for i, plan in self.layers.items() if not plan.work[phase].empty}

    def _plan(self, layer: int) -> LayerPlan:
        if layer not in self.layers:
            self.layers[layer] = LayerPlan(layer)
        return self.layers[layer]

    def kinds(self) -> set[str]:
        return {p.kind for p in self.points}

    def global_caller(self, kind: str, phase: str | None = None):
        """Caller for ``image`` / ``logits`` points (any phase when ``phase`` is None)."""
        for ph in ([phase] if phase else sorted(PHASES)):
            c = self.global_callers.get((kind, ph))
            if c is not None:
                return c
        return None

    def editing_probes(self, layer: int) -> bool:
        return any(p.kind == "attn_probs" and p.layer == layer and p.edits for p in self.points)
