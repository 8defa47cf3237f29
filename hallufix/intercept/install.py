"""Install exactly what a run declared on a model, and remove exactly that, also when a hook raises.

:class:`Interceptor` is a context manager around one ``generate`` (or one analysis prefill):

* the hallufix attention function on the language model only (``{"text_config": "hallufix"}``), when any
  attention-level point (kv / bias / probs / heads) is declared; the previous implementation is restored;
* one forward pre-hook on the decoder stack that tracks phase / step and calls ``hallufix_forward_start``;
* decoder-layer pre-hooks for declared ``lm.layers.{i}.in`` points;
* a ``LogitsProcessor`` for ``lm.logits`` (passed to ``generate`` by the caller);
* ``o_proj`` weight folds requested through :meth:`fold_head_gains`, restored bit-exactly.

After a normal exit it checks that every declared point whose phase ran fired at least once.
"""
from __future__ import annotations

from collections import Counter

import torch
from transformers import LogitsProcessor

from hallufix.events import ForwardInfo, HiddenEvent, LogitsEvent
from hallufix.intercept import attention as attn
from hallufix.intercept import strict
from hallufix.intercept.dispatch import HookTable


class HookNotFiredError(RuntimeError):
    """A declared hook point never fired although its phase ran: the intervention silently did nothing."""


class _LogitsHook(LogitsProcessor):
    def __init__(self, st: "Interceptor", caller):
        self.st, self.caller = st, caller

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ev = LogitsEvent(scores, input_ids, self.st.forward, self.st.layout, self.st.stash)
        self.caller(event=ev)
        self.st.fired("lm.logits")
        return ev.scores


class Interceptor:
    """Per-call installation of a run's hook table on a model.

    :param model: the loaded transformers model. :param adapter: its :class:`hallufix.models.families.base.Adapter`.
    :param table: the run's :class:`HookTable`. :param pm: the run's plugin manager (lifecycle hooks).
    :param layout: the batch's :class:`~hallufix.layout.TokenLayout`. :param info: :class:`ModelInfo`.
    :param stash: per-run storage shared with events.
    """

    def __init__(self, model, adapter, table: HookTable, pm, layout, info, stash: dict):
        self.model, self.adapter, self.table, self.pm = model, adapter, table, pm
        self.layout, self.info, self.stash = layout, info, stash
        self.forward: ForwardInfo | None = None
        self.counts: Counter = Counter()
        self.paths: Counter = Counter()
        self.phases_run: set[str] = set()
        #: per phase, ``{id(self_attn module): LayerPlan}`` of the layers with attention work in that phase
        self.plans: dict[str, dict[int, object]] = {"prefill": {}, "decode": {}}
        #: layers whose heads hook said at prefill that it is finished for this generation (deprecated fold / done)
        self.finished_layers: set[int] = set()
        #: layer -> ``(B, H)`` float32 static head gains set at prefill, applied at decode (:mod:`.heads`)
        self.static_gains: dict[int, torch.Tensor] = {}
        self._handles: list = []
        self._prev_impl = None
        self._folds: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._token = None
        self._step = 0
        self._forward_start = strict.wrap(pm.hook.hallufix_forward_start)
        params = next(adapter.text_model(model).parameters(), None)
        #: the language model's compute dtype (what events convert hand-backs to)
        self.dtype = params.dtype if params is not None else torch.float32

    # ------------------------------------------------------------------ bookkeeping used by the hot path
    def fired(self, name: str) -> None:
        self.counts[name] += 1

    def count_path(self, layer: int, path: str) -> None:
        self.paths[(layer, path)] += 1

    # ------------------------------------------------------------------ install / remove
    def __enter__(self) -> "Interceptor":
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._remove()
        if exc_type is None:
            self.check_fired()

    def _install(self) -> None:
        layers = self.adapter.decoder_layers(self.model)
        kinds = self.table.kinds()
        if kinds & {"kv", "bias", "probs", "heads"}:
            attn.register()
            self.plans = {phase: {id(layers[i].self_attn): plan
                                  for i, plan in self.table.attention_layers(phase).items()}
                          for phase in ("prefill", "decode")}
            self._prev_impl = self.adapter.get_text_attn_implementation(self.model)
            self.adapter.set_text_attn_implementation(self.model, attn.ATTN_NAME)
        text_model = self.adapter.text_model(self.model)
        self._handles.append(text_model.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        for i, plan in sorted(self.table.layers.items()):
            if any(k == "in" for (k, _) in plan.callers):
                self._handles.append(layers[i].register_forward_pre_hook(self._make_layer_hook(i), with_kwargs=True))
        self._token = attn.ACTIVE.set(self)

    def _remove(self) -> None:
        if self._token is not None:
            attn.ACTIVE.reset(self._token)
            self._token = None
        for h in reversed(self._handles):
            h.remove()
        self._handles.clear()
        for param, original in reversed(self._folds):
            param.data = original  # the untouched original tensor comes back: bit-exact, no copy
        self._folds.clear()
        if self._prev_impl is not None:
            self.adapter.set_text_attn_implementation(self.model, self._prev_impl)
            self._prev_impl = None

    def logits_processors(self) -> list:
        """The ``LogitsProcessor`` list to pass to ``generate`` (empty when no method declared ``lm.logits``)."""
        caller = self.table.global_caller("logits")
        return [_LogitsHook(self, caller)] if caller is not None else []

    def check_fired(self) -> None:
        """Raise :class:`HookNotFiredError` for declared points that never fired in a phase that ran."""
        missing = sorted({p.name for p in self.table.points
                          if p.kind != "image" and p.phases & self.phases_run and self.counts[p.name] == 0})
        if missing:
            raise HookNotFiredError(
                f"declared hook points never fired: {', '.join(missing)} (phases run: {sorted(self.phases_run)}). "
                f"The model adapter did not route them; check `hallufix hooks --model ...`.")

    # ------------------------------------------------------------------ hooks
    def _on_forward(self, module, args, kwargs):
        emb = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids", args[0] if args else None)
        q_len = emb.shape[1] if emb is not None else ids.shape[1]
        # the language model's cache argument: ``cache`` since transformers 5.24, ``past_key_values`` before
        past = kwargs.get("cache", kwargs.get("past_key_values"))
        offset = int(past.get_seq_length()) if past is not None else 0
        phase = "prefill" if offset == 0 else "decode"
        if phase == "prefill":
            self._step = 0
        else:
            self._step += 1
        self.forward = ForwardInfo(phase=phase, step=self._step, q_len=q_len, kv_offset=offset)
        self.phases_run.add(phase)
        self._forward_start(forward=self.forward)
        return None

    def _make_layer_hook(self, layer: int):
        plan = self.table.layers[layer]

        def hook(module, args, kwargs):
            caller = plan.callers.get(("in", self.forward.phase))
            if caller is None:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            ev = HiddenEvent(hidden, layer=layer, forward=self.forward, layout=self.layout, model=self.info,
                             stash=self.stash, dtype=hidden.dtype)
            caller(event=ev)
            self.fired(plan.names["in"])
            if ev.hidden is hidden:
                return None
            if args:
                return (ev.hidden,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": ev.hidden}

        return hook

    # ------------------------------------------------------------------ services for methods
    def fold_head_gains(self, layer: int, gains: torch.Tensor) -> None:
        """Scale ``o_proj``'s input columns of each head at ``layer`` by ``gains`` ``(H,)`` until the call ends.

        Exactly equals multiplying the per-head outputs before ``o_proj`` (``W_O diag(g ⊗ 1_D)``); the weight is
        restored bit-exactly on exit (the original tensor is kept, not written). Costs nothing per forward afterwards.
        """
        o_proj = self.adapter.o_proj(self.adapter.decoder_layers(self.model)[layer])
        weight = o_proj.weight
        H, D = self.info.num_heads, self.info.head_dim
        col = gains.to(weight.dtype).repeat_interleave(D)
        if col.numel() != H * D or weight.shape[1] != H * D:
            raise ValueError(f"layer {layer}: gains must be (H={H},)")
        # the parameter points at a scaled copy until the call ends; the original tensor is never written, so
        # restoring is a pointer swap (one pass over the weight instead of clone + scale + copy back)
        self._folds.append((weight, weight.data))
        with torch.no_grad():
            weight.data = weight.data * col[None, :]
