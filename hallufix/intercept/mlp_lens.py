"""Installers of the MLP hook points and the logit lens: module hooks on exactly the declared layers.

* ``lm.layers.{i}.mlp.in``: a forward pre-hook on layer ``i``'s MLP module (:meth:`Adapter.mlp`);
* ``lm.layers.{i}.mlp.out``: a forward hook on that module (its output is the FFN result before the residual add);
* ``lm.layers.{i}.lens``: a forward pre-hook on decoder layer ``i``, registered after any ``lm.layers.{i}.in``
  hook so the lens sees the stream the layer actually receives; it stores the last position ``(B, d)`` and calls
  ``hallufix_logit_lens`` with a lazy :class:`~hallufix.events_lens.LensEvent` (kept in the forward's memo, so a
  later MLP or logits hook of the same forward can read it).

Each hook looks up its caller for the current phase and returns at once when no method declared that phase. The
handles go to the :class:`~hallufix.intercept.install.Interceptor`, which removes them with its own.
"""
from __future__ import annotations

from hallufix.events_lens import LensEvent, LogitLens
from hallufix.events_mlp import MLPEvent, MLPOutEvent


def install(st, layers: list, handles: list) -> None:
    """Register the hooks of ``st.table``'s ``mlp_in`` / ``mlp_out`` / ``lens`` points on ``layers`` (the decoder
    layers of ``st.model``), appending each handle to ``handles`` as it is made (so a failure part-way leaves
    nothing the interceptor cannot remove)."""
    lens = None
    for i, plan in sorted(st.table.layers.items()):
        kinds = {k for (k, _) in plan.callers}
        if "lens" in kinds:
            if lens is None:
                lens = LogitLens(st.adapter.final_norm(st.model), st.adapter.lm_head(st.model),
                                 st.model.get_input_embeddings())
            handles.append(layers[i].register_forward_pre_hook(_lens_hook(st, i, plan, lens), with_kwargs=True))
        if kinds & {"mlp_in", "mlp_out"}:
            mlp = st.adapter.mlp(layers[i])
            if "mlp_in" in kinds:
                handles.append(mlp.register_forward_pre_hook(_mlp_in_hook(st, i, plan), with_kwargs=True))
            if "mlp_out" in kinds:
                handles.append(mlp.register_forward_hook(_mlp_out_hook(st, i, plan), with_kwargs=True))


def _common(st, layer: int, dtype) -> dict:
    return dict(layer=layer, forward=st.forward, layout=st.layout, model=st.info, stash=st.stash, dtype=dtype)


def _lens_hook(st, layer: int, plan, lens: LogitLens):
    def hook(module, args, kwargs):
        caller = plan.callers.get(("lens", st.forward.phase))
        if caller is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        ev = LensEvent(hidden[:, -1, :], lens, **_common(st, layer, hidden.dtype))
        st.forward.memo[("logit_lens", layer)] = ev
        caller(event=ev)
        st.fired(plan.names["lens"])
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
