"""The events of the attention probabilities and per-head outputs (``probs``, ``heads`` points); re-exported by
:mod:`hallufix.events`, the module to import them from. Shapes and the device/dtype contract as stated there."""
from __future__ import annotations

import warnings
from typing import Callable

import torch

from hallufix.events import LayerEvent, _conform


class ProbsEvent(LayerEvent):
    """``attn_probs.{i}``: ``probs`` ``(B, H, R, kv)`` float32 of the rows ``rows`` ``(R,)`` (indices
    into q). An edit (``event.probs = new``) keeps the shape and is stored as float32 on the model's device.
    ``last_index``: where the core knows it, the position of the last query row in ``rows``."""

    def __init__(self, probs: torch.Tensor, rows: torch.Tensor, last_index: int | None = None, **kw):
        super().__init__(**kw)
        self._probs, self.rows, self.edited, self._last_index = probs, rows, False, last_index

    @property
    def probs(self) -> torch.Tensor:
        return self._probs

    @probs.setter
    def probs(self, new: torch.Tensor) -> None:
        old = self._probs
        self._probs = _conform(f"layer {self.layer}: edited probs", new, old.shape, old.device, old.dtype)
        self.edited = True

    def row_mask(self, kind: str) -> torch.Tensor:
        """``(B, R)`` bool: which probed rows are of ``kind`` (``last``, ``text``, ``all``)."""
        B, q = self.layout.batch_size, self.forward.q_len
        if kind == "all":
            return torch.ones(B, len(self.rows), dtype=torch.bool, device=self._probs.device)
        if kind == "last":  # in a beam look-ahead forward every candidate row is a last row
            return (self.rows >= q - self.forward.last_rows)[None, :].expand(B, -1)
        if kind == "text":
            return self.text_rows[:, self.rows]
        raise ValueError(f"unknown row kind {kind!r}")

    def last(self) -> torch.Tensor:
        """``(B, H, kv)``: the last query row (final prompt token at prefill, the new token at decode; in a beam
        look-ahead forward the last candidate's row: :meth:`last_rows` gives every candidate's)."""
        if self.forward.q_len == 1:  # a decode step: the probed row is the single row
            return self._probs[:, :, 0]
        if self._last_index is not None:
            return self._probs[:, :, self._last_index]
        idx = (self.rows == self.forward.q_len - 1).nonzero()
        if idx.numel() == 0:
            raise LookupError(f"layer {self.layer}: the last row was not probed; declare rows='last'")
        return self._probs[:, :, int(idx[0, 0])]

    def last_rows(self) -> torch.Tensor:
        """``(B, H, n, c)`` float32: the newest token's row, one per continuation, over the keys it sees in cache
        order, its own key last. At prefill and at a decode step ``n = 1`` and this is ``last()[:, :, None]``
        (``c = kv``). In a beam look-ahead forward of ``k`` candidates (``forward.lookahead``) ``n = k`` and
        ``c = kv_offset + 1``: row ``j`` is candidate ``j`` over the cached keys and then its own key (the other
        candidates' keys, masked for it, are dropped) -- the row a one-candidate look-ahead of ``j`` gives."""
        k = self.forward.lookahead
        if not k:
            return self.last()[:, :, None]
        q, off = self.forward.q_len, self.forward.kv_offset
        sel = (self.rows >= q - k).nonzero().squeeze(1)
        if sel.numel() != k:
            raise LookupError(f"layer {self.layer}: the look-ahead rows were not probed; declare rows='last'")
        rows = self._probs[:, :, sel]  # (B, H, k, off + k)
        own = torch.diagonal(rows[..., off:off + k], dim1=-2, dim2=-1)  # (B, H, k): each candidate's own key
        return torch.cat([rows[..., :off], own[..., None]], dim=-1)

    def visual_last(self) -> torch.Tensor:
        """``(B, H, n_max)`` float32: the last row's attention over each row's visual tokens, in the slots of
        :attr:`visual` (padded slots 0)."""
        from hallufix.capture import gather_visual

        return gather_visual(self.last(), self.visual)


def _check_gains(layer: int, gains: torch.Tensor, B: int, H: int) -> None:
    if not isinstance(gains, torch.Tensor):
        raise TypeError(f"layer {layer}: gains must be a torch.Tensor, got {type(gains).__name__}")
    if tuple(gains.shape) not in ((H,), (B, H)):
        raise ValueError(f"layer {layer}: gains must be (H={H},) or (B={B}, H={H}), got {tuple(gains.shape)}")


class HeadsEvent(LayerEvent):
    """``attn_heads.{i}``: ``output`` ``(B, q, H, D)``; :meth:`scale` multiplies per-head gains.

    Gains that are fixed at prefill for the whole generation are a declaration, not a call:
    ``points.attn_heads(layers, static_gains=True, fold=...)`` (see :class:`StaticGainsEvent`). :meth:`fold` and
    :meth:`done` remain for one release as deprecated aliases."""

    def __init__(self, output: torch.Tensor, fold: Callable[[torch.Tensor], None] | None = None,
                 done: Callable[[], None] | None = None, **kw):
        super().__init__(**kw)
        self._output, self._fold, self._done = output, fold, done

    def fold(self, gains: torch.Tensor) -> None:
        """Deprecated: declare ``attn_heads(..., static_gains=True, fold=True)`` and :meth:`scale` at prefill.

        Folds gains ``(H,)`` into ``o_proj`` for the rest of this generation (exact, restored afterwards); it
        already applies to this forward's output (do not also :meth:`scale`). Implies :meth:`done`."""
        warnings.warn("HeadsEvent.fold is deprecated: declare points.attn_heads(..., static_gains=True, fold=True) "
                      "and call event.scale(gains) at prefill", DeprecationWarning, stacklevel=2)
        self._fold(gains)

    def done(self) -> None:
        """Deprecated: declare ``attn_heads(..., static_gains=True)``; the core then releases the layer itself.

        Says at prefill that this method needs no further call at this layer in this generation. When it is the
        layer's only decode-time hook, decode steps skip the layer's hook; otherwise the method is still called."""
        warnings.warn("HeadsEvent.done is deprecated: declare points.attn_heads(..., static_gains=True)",
                      DeprecationWarning, stacklevel=2)
        if self._done is not None:
            self._done()

    @property
    def output(self) -> torch.Tensor:
        return self._output

    @output.setter
    def output(self, new: torch.Tensor) -> None:
        old = self._output
        self._output = _conform(f"layer {self.layer}: head outputs", new, old.shape, old.device, old.dtype)

    def scale(self, gains: torch.Tensor) -> None:
        """Multiply head outputs by ``gains`` ``(H,)`` or ``(B, H)`` (moved to the outputs' device and dtype)."""
        out = self._output
        _check_gains(self.layer, gains, out.shape[0], out.shape[2])
        g = gains if gains.device == out.device and gains.dtype == out.dtype else \
            gains.to(device=out.device, dtype=out.dtype)
        g = g[None, None, :, None] if g.dim() == 1 else g[:, None, :, None]
        self._output = out * g


class StaticGainsEvent(LayerEvent):
    """A ``heads`` point declared ``static_gains=True``, at prefill: the method hands its per-head gains for the
    whole generation to :meth:`scale`; the core applies them (see :func:`hallufix.intercept.heads.apply_heads`).

    ``output`` ``(B, q, H, D)`` is readable (the outputs before any static gain) but not assignable: a method that
    edits outputs declares a plain ``heads`` point. It is valid during the hook only: the core then scales that
    tensor in place where no plain hook saw it (``.clone()`` it to keep it). Gains of several :meth:`scale`
    calls, and of several methods at one layer, multiply; the result is :attr:`gains` ``(B, H)`` float32
    (``None``: no call)."""

    def __init__(self, output: torch.Tensor, **kw):
        super().__init__(**kw)
        self._output = output
        self.gains: torch.Tensor | None = None

    @property
    def output(self) -> torch.Tensor:
        return self._output

    @output.setter
    def output(self, new) -> None:
        raise TypeError(f"layer {self.layer}: a static_gains heads point only scales (event.scale(gains)); declare "
                        f"points.attn_heads(...) without static_gains to edit head outputs")

    def scale(self, gains: torch.Tensor) -> None:
        """Gains ``(H,)`` or ``(B, H)`` for this layer's heads at prefill and at every decode step."""
        B, _, H, _ = self._output.shape
        _check_gains(self.layer, gains, B, H)
        g = gains.to(device=self._output.device, dtype=torch.float32).expand(B, H)
        self.gains = g if self.gains is None else self.gains * g
