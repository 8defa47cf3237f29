"""The logit lens: next-token logits of an intermediate layer, through the model's own final norm and ``lm_head``.

``logit_lens.{i}`` (declared with :func:`hallufix.points.logit_lens`) hands ``hallufix_logit_lens`` a
:class:`LensEvent` for the residual stream *entering* decoder layer ``i`` (``i = 0``: the input embeddings; the
``hidden_states[i]`` of transformers' ``output_hidden_states``) at the last position of the forward (the final
prompt token at prefill, the new token at decode). Nothing is projected to the vocabulary unless a hook asks
(:meth:`LensEvent.logits`), so a method that reads the lens only while a condition holds (MemVR's trigger) pays
one ``lm_head`` product per layer it actually looks at.

A method that needs the lens only after the forward (DoLa, in its logits hook) calls :meth:`LensEvent.prefetch`
instead: the core then computes those rows together with the model's own ``lm_head`` call of the same forward
(:mod:`hallufix.intercept.lens_join`: one pass over the head's weight instead of two, the model's logits bit for
bit what the head gives alone) and :meth:`LensEvent.logits` returns them. Where the rows cannot join that call (the
head is not a plain ``nn.Linear``, sits on another device or under an offload hook, or the forward never reaches
it), :meth:`LensEvent.logits` computes every pending row of the forward in one separate product, as before.

Shapes: ``B`` batch rows, ``d`` hidden size, ``V`` vocabulary. Hidden states stay in the model dtype on the
model's device; logits are float32 on the model's device (the product runs in the model dtype, as the model's own
logits, and is then cast, as ``generate`` casts its scores).
"""
from __future__ import annotations

import torch

from hallufix.events import ForwardInfo, LayerEvent

#: ``forward.memo`` key of the forward's pending prefetches: a list of ``(LensEvent, norm)``
PREFETCH_KEY = ("logit_lens", "prefetch")


class LogitLens:
    """The projector ``lm_head(norm(h))`` of one model: call it on ``(..., d)`` hidden states -> ``(..., V)`` float32.

    :param norm: the language model's final norm module. :param lm_head: its output projection.
    ``norm=False`` projects the raw residual stream (DoLa's official code: ``lm_head(hidden_states[j])``).
    ``tied``: whether ``lm_head`` shares its weight with the input embeddings ``embed`` (then the embeddings' lens
    is close to the identity; DoLa skips it). ``busy``: true while the lens itself calls ``lm_head`` (the core's
    head hooks leave such a call alone)."""

    def __init__(self, norm, lm_head, embed=None):
        self.norm, self.lm_head = norm, lm_head
        self.tied = embed is not None and getattr(embed, "weight", None) is getattr(lm_head, "weight", 0)
        self.busy = False

    def rows(self, hidden: torch.Tensor, norm: bool = True) -> torch.Tensor:
        """What enters ``lm_head``: ``norm(hidden)`` or ``hidden`` (same shape and dtype)."""
        return self.norm(hidden) if norm else hidden

    def __call__(self, hidden: torch.Tensor, norm: bool = True) -> torch.Tensor:
        self.busy = True
        try:
            return self.lm_head(self.rows(hidden, norm)).float()
        finally:
            self.busy = False


class LensEvent(LayerEvent):
    """``logit_lens.{i}``: ``hidden`` ``(B, d)`` the last position's residual stream entering layer ``i``
    (read-only, model dtype); :meth:`logits` its next-token logits ``(B, V)`` float32; :meth:`prefetch` asks for
    them from the model's own head product; ``lens`` the projector."""

    def __init__(self, hidden: torch.Tensor, lens: LogitLens, **kw):
        super().__init__(**kw)
        self.hidden, self.lens = hidden, lens
        self._logits: dict[bool, torch.Tensor] = {}

    def prefetch(self, norm: bool = True) -> None:
        """Have this row set ride on the model's ``lm_head`` call of this forward; read it after the forward with
        :meth:`logits` (same ``norm``). Costs nothing until the head runs; idempotent."""
        if norm in self._logits:
            return
        pending = self.forward.memo.setdefault(PREFETCH_KEY, [])
        if not any(ev is self and n == norm for ev, n in pending):
            pending.append((self, norm))

    def deliver(self, norm: bool, logits: torch.Tensor) -> None:
        """Core side of :meth:`prefetch`: store the ``(B, V)`` float32 logits computed for ``norm``."""
        self._logits[norm] = logits

    def logits(self, norm: bool = True) -> torch.Tensor:
        """``(B, V)`` float32: ``lm_head(norm(hidden))`` (``norm=False``: ``lm_head(hidden)``), computed once: the
        prefetched rows when the model's head product carried them, else a separate product (of every row of this
        forward still pending with the same ``norm``, in one call)."""
        if norm not in self._logits:
            pending = self.forward.memo.get(PREFETCH_KEY, []) if self.forward is not None else []
            group = [ev for ev, n in pending if n == norm and norm not in ev._logits]
            if self not in group:
                group = [self]
            out = self.lens(torch.cat([ev.hidden for ev in group]), norm=norm)
            for ev, part in zip(group, out.split([ev.hidden.shape[0] for ev in group])):
                ev._logits[norm] = part
            if pending:
                pending[:] = [(ev, n) for ev, n in pending if n not in ev._logits]
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
