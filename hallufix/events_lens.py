"""The logit lens: next-token logits of an intermediate layer, through the model's own final norm and ``lm_head``.

``logit_lens.{i}`` (declared with :func:`hallufix.points.logit_lens`) hands ``hallufix_logit_lens`` a
:class:`LensEvent` for the residual stream *entering* decoder layer ``i`` (``i = 0``: the input embeddings; the
``hidden_states[i]`` of transformers' ``output_hidden_states``) at the last position of the forward (the final
prompt token at prefill, the new token at decode). Nothing is projected to the vocabulary unless a hook asks
(:meth:`LensEvent.logits`), so a method that reads the lens only while a condition holds (MemVR's trigger) pays
one ``lm_head`` product per layer it actually looks at.

Shapes: ``B`` batch rows, ``d`` hidden size, ``V`` vocabulary. Hidden states stay in the model dtype on the
model's device; logits are float32 on the model's device (the product runs in the model dtype, as the model's own
logits, and is then cast, as ``generate`` casts its scores).
"""
from __future__ import annotations

import torch

from hallufix.events import ForwardInfo, LayerEvent


class LogitLens:
    """The projector ``lm_head(norm(h))`` of one model: call it on ``(..., d)`` hidden states -> ``(..., V)`` float32.

    :param norm: the language model's final norm module. :param lm_head: its output projection.
    ``norm=False`` projects the raw residual stream (DoLa's official code: ``lm_head(hidden_states[j])``).
    ``tied``: whether ``lm_head`` shares its weight with the input embeddings ``embed`` (then the embeddings' lens
    is close to the identity; DoLa skips it)."""

    def __init__(self, norm, lm_head, embed=None):
        self.norm, self.lm_head = norm, lm_head
        self.tied = embed is not None and getattr(embed, "weight", None) is getattr(lm_head, "weight", 0)

    def __call__(self, hidden: torch.Tensor, norm: bool = True) -> torch.Tensor:
        h = self.norm(hidden) if norm else hidden
        return self.lm_head(h).float()


class LensEvent(LayerEvent):
    """``logit_lens.{i}``: ``hidden`` ``(B, d)`` the last position's residual stream entering layer ``i``
    (read-only, model dtype); :meth:`logits` its next-token logits ``(B, V)`` float32; ``lens`` the projector."""

    def __init__(self, hidden: torch.Tensor, lens: LogitLens, **kw):
        super().__init__(**kw)
        self.hidden, self.lens = hidden, lens
        self._logits: dict[bool, torch.Tensor] = {}

    def logits(self, norm: bool = True) -> torch.Tensor:
        """``(B, V)`` float32: ``lm_head(norm(hidden))`` (``norm=False``: ``lm_head(hidden)``), computed once."""
        if norm not in self._logits:
            self._logits[norm] = self.lens(self.hidden, norm=norm)
        return self._logits[norm]


def lens_event(forward: ForwardInfo, layer: int) -> LensEvent:
    """The :class:`LensEvent` of ``layer`` in ``forward`` (any event's ``event.forward``), once that layer was
    reached; raises ``LookupError`` when no method declared ``logit_lens.{layer}`` for this phase."""
    ev = forward.memo.get(("logit_lens", layer)) if forward is not None else None
    if ev is None:
        raise LookupError(f"no logit lens at layer {layer} in this {getattr(forward, 'phase', '')} forward: declare "
                          f"hallufix.points.logit_lens([{layer}]) (and reach the layer before asking)")
    return ev


def lens_logits(event, layer: int, norm: bool = True) -> torch.Tensor:
    """``(B, V)`` float32 logit-lens logits of ``layer`` in the forward of ``event`` (a layer, MLP or logits
    event); see :func:`lens_event`."""
    return lens_event(event.forward, layer).logits(norm=norm)
