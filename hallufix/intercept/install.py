"""Install exactly what a run declared on a model, and remove exactly that, also when a hook raises.

:class:`Interceptor` is a context manager around one ``generate`` (or one analysis prefill). It composes the
installers of :mod:`hallufix.intercept` (:class:`~hallufix.intercept.installer.Installed`: installed in order,
removed in reverse, also on failure):

* :class:`~hallufix.intercept.attn_impl.AttentionImplementation`: the hallufix attention function (registered once
  through :mod:`~hallufix.intercept.registration`) on the language model only (``{"text_config": "hallufix"}``),
  when any attention-level point (kv / bias / probs / heads) is declared; the previous implementation is restored;
* :class:`~hallufix.intercept.module_hooks.ModuleHooks`: one forward pre-hook on the decoder stack that tracks
  phase / step and calls ``hallufix_forward_start``, and decoder-layer pre-hooks for declared layer-input points;
* :class:`~hallufix.intercept.weights.WeightFolds`: ``o_proj`` folds requested through :meth:`fold_head_gains`,
  restored bit-exactly;
* :class:`~hallufix.intercept.logits.LogitsHook` for ``lm.logits`` (a ``LogitsProcessor`` passed to ``generate``
  by the caller: :meth:`Interceptor.logits_processors`).
* :class:`~hallufix.intercept.qformer.QFormerRoute`: the Q-Former function on the Q-Former only, when a
  ``qformer_bias`` point is declared.

After a normal exit it checks that every declared point whose phase ran fired at least once.
"""
from __future__ import annotations

from collections import Counter

import torch

from hallufix.events import ForwardInfo, HiddenEvent
from hallufix.forward import LOOKAHEAD
from hallufix.intercept import attention as attn
from hallufix.intercept.qformer import QFormerRoute
from hallufix.points import SUBMODEL_KINDS
from hallufix.intercept import mlp_lens, strict
from hallufix.intercept.attn_impl import AttentionImplementation
from hallufix.intercept.dispatch import ATTENTION_KINDS, HookTable
from hallufix.intercept.installer import Installed
from hallufix.intercept.logits import LogitsHook
from hallufix.intercept.module_hooks import ModuleHooks
from hallufix.intercept.registration import ensure_registered
from hallufix.intercept.weights import WeightFolds


class HookNotFiredError(RuntimeError):
    """A declared hook point never fired although its phase ran: the intervention silently did nothing."""


class _ActiveRun:
    """Installer: makes ``interceptor`` the run the hallufix attention function serves (a context variable)."""

    def __init__(self, interceptor: "Interceptor"):
        self.ic, self._token = interceptor, None

    def install(self) -> None:
        self._token = attn.ACTIVE.set(self.ic)

    def remove(self) -> None:
        if self._token is not None:
            attn.ACTIVE.reset(self._token)
            self._token = None


class Interceptor:
    """Per-call installation of a run's hook table on a model.

    :param model: the loaded transformers model. :param adapter: its :class:`hallufix.models.families.base.Adapter`.
    :param table: the run's :class:`HookTable`. :param pm: the run's plugin manager (lifecycle hooks).
    :param layout: the batch's :class:`~hallufix.layout.TokenLayout`. :param info: :class:`ModelInfo`.
    """

    def __init__(self, model, adapter, table: HookTable, pm, layout, info):
        self.model, self.adapter, self.table, self.pm = model, adapter, table, pm
        self.layout, self.info = layout, info
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
        self.weights = WeightFolds()
        #: the decoder layers of the language model, listed once per call (``fold_head_gains`` runs per layer)
        self._layers: list | None = None
        self._installed: Installed | None = None
        #: the Q-Former route while installed (:class:`~hallufix.intercept.qformer.QFormerRoute`), else ``None``
        self.qformer_route: QFormerRoute | None = None
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
        self._installed = Installed(*self._installers())
        self._installed.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._installed.__exit__(exc_type, exc, tb)
        self._installed = None
        if exc_type is None:
            self.check_fired()

    def _installers(self) -> list:
        """What this run installs, in installation order (removed in reverse)."""
        layers = self._layers = self.adapter.decoder_layers(self.model)
        out = []
        if self.table.kinds() & ATTENTION_KINDS:
            ensure_registered(attn.ATTN_NAME, attn.hallufix_attention)
            self.plans = {phase: {id(layers[i].self_attn): plan
                                  for i, plan in self.table.attention_layers(phase).items()}
                          for phase in ("prefill", "decode")}
            out.append(AttentionImplementation(self.model, {self.adapter.text_config_key: attn.ATTN_NAME}))
        hooks = ModuleHooks().pre(self.adapter.text_model(self.model), self._on_forward, with_kwargs=True)
        for i, plan in sorted(self.table.layers.items()):
            if any(k == "layer_input" for (k, _) in plan.callers):
                hooks.pre(layers[i], self._make_layer_hook(i), with_kwargs=True)
        mlp_lens.install(self, layers, hooks)  # MLP hooks and the logit lens (after the layer-input hooks)
        if self.table.kinds() & set(SUBMODEL_KINDS):
            self.qformer_route = QFormerRoute(self)
            out.append(self.qformer_route)
        return out + [hooks, self.weights, _ActiveRun(self)]

    def logits_processors(self) -> list:
        """The ``LogitsProcessor`` list to pass to ``generate`` (empty when no method declared ``lm.logits``)."""
        caller = self.table.global_caller("logits")
        return [LogitsHook(self, caller)] if caller is not None else []

    def check_fired(self) -> None:
        """Raise :class:`HookNotFiredError` for declared points that never fired in a phase that ran."""
        missing = sorted({p.name for p in self.table.points
                          if p.kind != "input_image" and p.phases & self.phases_run and self.counts[p.name] == 0})
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
        self.forward = ForwardInfo(phase=phase, step=self._step, q_len=q_len, kv_offset=offset,
                                   lookahead=LOOKAHEAD.get() if phase == "decode" else 0)
        self.phases_run.add(phase)
        self._forward_start(forward=self.forward)
        return None

    def _make_layer_hook(self, layer: int):
        plan = self.table.layers[layer]

        def hook(module, args, kwargs):
            caller = plan.callers.get(("layer_input", self.forward.phase))
            if caller is None:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            ev = HiddenEvent(hidden, layer=layer, forward=self.forward, layout=self.layout, model=self.info,
                             dtype=hidden.dtype)
            caller(event=ev)
            self.fired(plan.names["layer_input"])
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
        layers = self._layers if self._layers is not None else self.adapter.decoder_layers(self.model)
        o_proj = self.adapter.o_proj(layers[layer])
        weight = o_proj.weight
        H, D = self.info.num_heads, self.info.head_dim
        col = gains.to(weight.dtype).repeat_interleave(D)
        if col.numel() != H * D or weight.shape[1] != H * D:
            raise ValueError(f"layer {layer}: gains must be (H={H},)")
        self.weights.scale_columns(weight, col)
