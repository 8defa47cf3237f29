"""Installers of the MLP hook points and the logit lens: module hooks on exactly the declared layers.

* ``mlp_in.{i}``: a forward pre-hook on layer ``i``'s MLP module (:meth:`Adapter.mlp`);
* ``mlp_out.{i}``: a forward hook on that module (its output is the FFN result before the residual add);
* ``logit_lens.{i}``: a forward pre-hook on decoder layer ``i``, registered after any ``layer_input.{i}``
  hook so the lens sees the stream the layer actually receives; it stores the last position ``(B, d)`` and calls
  ``hallufix_logit_lens`` with a lazy :class:`~hallufix.events_lens.LensEvent` (kept in the forward's memo, so a
  later MLP or logits hook of the same forward can read it);
* with any ``logit_lens`` point, the head hooks of :mod:`hallufix.intercept.lens_join` (prefetched lens rows
  computed with the model's own ``lm_head`` call).

Each hook looks up its caller for the current phase and returns at once when no method declared that phase. The
handles go to the :class:`~hallufix.intercept.install.Interceptor`, which removes them with its own.
"""
from __future__ import annotations

from hallufix.events_lens import LensEvent, LogitLens
from hallufix.events_mlp import MLPEvent, MLPOutEvent
from hallufix.intercept.lens_join import HeadJoin


def install(st, layers: list, hooks) -> None:
    """Queue the hooks of ``st.table``'s ``mlp_in`` / ``mlp_out`` / ``logit_lens`` points on ``layers`` (the decoder
    layers of ``st.model``) in ``hooks`` (the interceptor's :class:`~hallufix.intercept.module_hooks.ModuleHooks`,
    which registers and removes them with its own)."""
    lens = None
    for i, plan in sorted(st.table.layers.items()):
        kinds = {k for (k, _) in plan.callers}
        if "logit_lens" in kinds:
            if lens is None:
                lens = LogitLens(st.adapter.final_norm(st.model), st.adapter.lm_head(st.model),
                                 st.model.get_input_embeddings())
                HeadJoin(st, lens).install(hooks)  # prefetched lens rows ride on the model's head call
            hooks.pre(layers[i], _lens_hook(st, i, plan, lens), with_kwargs=True)
        if kinds & {"mlp_in", "mlp_out"}:
            mlp = st.adapter.mlp(layers[i])
            if "mlp_in" in kinds:
                hooks.pre(mlp, _mlp_in_hook(st, i, plan), with_kwargs=True)
            if "mlp_out" in kinds:
                hooks.post(mlp, _mlp_out_hook(st, i, plan), with_kwargs=True)


def _common(st, layer: int, dtype) -> dict:
    return dict(layer=layer, forward=st.forward, layout=st.layout, model=st.info, dtype=dtype)


def _lens_hook(st, layer: int, plan, lens: LogitLens):
    def hook(module, args, kwargs):
        caller = plan.callers.get(("logit_lens", st.forward.phase))
        if caller is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        ev = LensEvent(hidden[:, -1, :], lens, **_common(st, layer, hidden.dtype))
        st.forward.memo[("logit_lens", layer)] = ev
        caller(event=ev)
        st.fired(plan.names["logit_lens"])
        return None

    return hook


def _mlp_in_hook(st, layer: int, plan):
    def hook(module, args, kwargs):
        caller = plan.callers.get(("mlp_in", st.forward.phase))
        if caller is None:
            return None
        hidden = args[0] if args else kwargs["x"]
        ev = MLPEvent(hidden, **_common(st, layer, hidden.dtype))
        caller(event=ev)
        st.fired(plan.names["mlp_in"])
        if ev.hidden is hidden:
            return None
        if args:
            return (ev.hidden,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "x": ev.hidden}

    return hook


def _mlp_out_hook(st, layer: int, plan):
    def hook(module, args, kwargs, output):
        caller = plan.callers.get(("mlp_out", st.forward.phase))
        if caller is None:
            return None
        x = args[0] if args else next(iter(kwargs.values()))
        ev = MLPOutEvent(output, x, **_common(st, layer, output.dtype))
        caller(event=ev)
        st.fired(plan.names["mlp_out"])
        return None if ev.output is output else ev.output

    return hook
