"""Per-head outputs before ``o_proj``: the ``heads`` hooks, static gains, folds and the release of finished layers.

Two kinds of ``heads`` point (:func:`hallufix.points.attn_heads`):

* plain: the hook runs in every declared forward and may scale or replace the outputs (:class:`HeadsEvent`);
* ``static_gains``: the hook runs at prefill only and hands gains that hold for the whole generation to
  :class:`StaticGainsEvent`. The core multiplies the gains of every static method at the layer, then: all ones ->
  nothing to do; ``fold`` declared and one gain vector for the whole batch -> folded into ``o_proj``'s weight
  (``o_proj`` runs right after, so the fold covers this prefill too; restored when the call ends); otherwise the
  outputs are scaled now and, at every decode step, by the core from the stored gains (no hook call). Static
  gains multiply the final head outputs, after the plain hooks of the same forward.

After prefill the core releases a layer whose remaining decode work is nothing (no kv / bias / probe, no plain
heads hook, no stored gains): its decode steps run transformers' own SDPA with no event at all. The deprecated
:meth:`HeadsEvent.fold` / :meth:`HeadsEvent.done` keep their old rule: the layer is released when the method that
said it is the layer's only plain heads hook at prefill and at decode.

Per-run state lives on the :class:`~hallufix.intercept.install.Interceptor`: ``static_gains`` (layer -> ``(B, H)``
float32 gains applied at decode), ``finished_layers`` (deprecated fold / done), ``plans`` (what it releases from).
"""
from __future__ import annotations

import torch

from hallufix.attn_events import HeadsEvent, StaticGainsEvent
from hallufix.intercept import kernels as K


def apply_heads(st, plan, module, work, out: torch.Tensor, ev_kw: dict) -> torch.Tensor:
    """The layer's per-head work on ``out`` ``(B, q, H, D)`` (model dtype) in the current phase; returns the
    outputs ``o_proj`` receives."""
    layer = plan.layer
    if work.heads is not None:
        ev = HeadsEvent(out, fold=lambda g: _deprecated_fold(st, layer, g),
                        done=lambda: st.finished_layers.add(layer), **ev_kw)
        work.heads(event=ev)
        st.fired(plan.names["attn_heads"])
        out = ev.output
    # no plain hook saw ``out`` (none can hold it), so static gains may multiply the kernel's own output in place
    owned = work.heads is None and not out.requires_grad
    if work.static is not None:
        out = _static_at_prefill(st, plan, work, out, ev_kw, owned)
    elif work.carries_static:
        out = apply_stored_gains(st, layer, out, inplace=owned)
    if st.forward.phase == "prefill" and (work.static is not None or layer in st.finished_layers):
        release_if_idle(st, plan, module)
    return out


def apply_stored_gains(st, layer: int, out: torch.Tensor, inplace: bool | None = None) -> torch.Tensor:
    """A decode forward's outputs ``out`` ``(B, q, H, D)`` (``q = 1``, or ``k`` in a beam look-ahead) times the
    gains static points set at prefill (unchanged where none were stored: all ones, or folded). ``inplace``
    (default: unless ``out`` needs grad) multiplies ``out`` itself: pass a tensor nothing else holds."""
    gains = st.static_gains.get(layer)
    if gains is None:
        return out
    return K.scale_heads(out, gains, inplace=not out.requires_grad if inplace is None else inplace)


def _static_at_prefill(st, plan, work, out: torch.Tensor, ev_kw: dict, owned: bool) -> torch.Tensor:
    ev = StaticGainsEvent(out, **ev_kw)
    work.static(event=ev)
    st.fired(plan.names["attn_heads"])
    gains = ev.gains
    if gains is None or bool((gains == 1).all()):
        return out
    if work.fold and bool((gains == gains[:1]).all()):
        st.fold_head_gains(plan.layer, gains[0])  # o_proj runs next: the fold covers this forward too
        return out
    st.static_gains[plan.layer] = gains
    return K.scale_heads(out, gains, inplace=owned)


def _deprecated_fold(st, layer: int, gains: torch.Tensor) -> None:
    st.fold_head_gains(layer, gains)
    st.finished_layers.add(layer)


def release_if_idle(st, plan, module) -> None:
    """Drop ``plan``'s layer from the decode plans when its decode steps have nothing left to do (see the module
    docstring); ``module`` is the layer's attention module."""
    dec = plan.work["decode"]
    if not dec.heads_only or plan.layer in st.static_gains:
        return
    if dec.heads is not None:  # a plain heads hook at decode: only the deprecated fold / done of its one method
        pre = plan.callers.get(("attn_heads", "prefill"))
        if plan.layer not in st.finished_layers or pre is None:
            return
        pre_impls, dec_impls = pre.get_hookimpls(), dec.heads.get_hookimpls()
        if not (len(dec_impls) == 1 and len(pre_impls) == 1 and dec_impls[0].plugin is pre_impls[0].plugin):
            return
    st.plans["decode"].pop(id(module), None)
