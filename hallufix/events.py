"""The objects hooks receive. Each carries the current value of its hook point (edits chain through it) and the
token layout needed to interpret rows and columns.

Shapes: ``B`` batch, ``H`` query heads, ``Hkv`` key/value heads, ``q`` query rows of this forward, ``kv`` keys,
``D`` head dim, ``d`` hidden size, ``R`` probed rows, ``V`` vocabulary, ``n_max`` the most visual tokens of a row.

Devices and dtypes (the contract written out in :mod:`hallufix.hookspecs`): every tensor an event carries is on
the model's device (:attr:`LayerEvent.device`); what a hook hands back through an event (a bias, keys/values,
hidden states, probabilities, gains, logits) is checked for shape and moved to that device and the slot's dtype
by the event. Probe rows (:attr:`ProbsEvent.probs`) are float32 whatever the model dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import torch

from hallufix.layout import ModelInfo, TokenLayout
from hallufix.visual import VisualTokens


def _conform(what: str, new: torch.Tensor, shape, device, dtype) -> torch.Tensor:
    """``new`` checked against ``shape`` and moved to ``device`` / ``dtype`` (no copy when already there)."""
    if not isinstance(new, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(new).__name__}")
    if tuple(new.shape) != tuple(shape):
        raise ValueError(f"{what} must keep shape {tuple(shape)}, got {tuple(new.shape)}")
    if new.device != device or new.dtype != dtype:
        new = new.to(device=device, dtype=dtype)
    return new


@dataclass
class ForwardInfo:
    """One language-model forward: ``phase`` (``prefill``/``decode``), ``step`` (0 at prefill), ``q_len`` query
    rows, ``kv_offset`` cached positions before them (so row ``i`` sits at cache position ``kv_offset + i``)."""

    phase: str
    step: int
    q_len: int
    kv_offset: int
    #: per-forward memo of role masks shared by every layer's events (filled lazily; read-only tensors)
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def positions(self) -> torch.Tensor:
        """``(q,)`` cache positions of this forward's query rows, in host memory (see :meth:`positions_on`)."""
        return self.positions_on("cpu")

    def positions_on(self, device) -> torch.Tensor:
        """``(q,)`` cache positions of this forward's query rows, on ``device``."""
        return torch.arange(self.kv_offset, self.kv_offset + self.q_len, device=device)

    def shared(self, key, make):
        """``make()`` once per forward under ``key``; later layers of the same forward get the same tensor."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]


@dataclass
class BatchInfo:
    """A batch being generated: model facts, the questions, and (once the processor ran) the token layout.

    ``hallufix_batch_start`` receives it before the image hook, so ``layout`` is ``None`` there (the images, which
    decide the layout, may still change); from the first forward to ``hallufix_batch_end`` it is the batch's
    :class:`~hallufix.layout.TokenLayout`. ``diagnostics[row]`` is filled from what each method's
    ``hallufix_batch_end`` returns, under the method's name."""

    model: ModelInfo
    layout: TokenLayout | None
    questions: list[str]
    diagnostics: list[dict] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        """Rows in the batch (known from the start: one per question)."""
        return len(self.questions)

    @property
    def visual(self) -> VisualTokens:
        """The batch's :class:`~hallufix.visual.VisualTokens` (built once per batch; shared with every event)."""
        if self.layout is None:
            raise RuntimeError("batch.visual is known once the images are processed (after hallufix_input_image); "
                               "hallufix_batch_start runs before, read it in a later hook")
        return self.layout.visual_tokens


class LayerEvent:
    """Base of per-layer events: ``layer``, ``forward``, ``layout``, the batch's :attr:`visual` tokens and role
    masks for this forward's rows. ``device``: the model's device (every tensor here lives on it); ``dtype``: the
    language model's compute dtype."""

    def __init__(self, layer: int, forward: ForwardInfo, layout: TokenLayout, model: ModelInfo,
                 dtype: torch.dtype = torch.float32):
        self.layer, self.forward, self.layout, self.model = layer, forward, layout, model
        self.dtype = dtype

    @property
    def device(self) -> torch.device:
        return self.layout.input_ids.device

    @property
    def visual(self) -> VisualTokens:
        """The batch's :class:`~hallufix.visual.VisualTokens`: ``index``/``valid`` ``(B, n_max)``, ``counts``,
        per-image ``grids`` and slot ``ranges`` (pass it to :mod:`hallufix.capture`)."""
        return self.layout.visual_tokens

    @cached_property
    def positions(self) -> torch.Tensor:
        """``(q,)`` cache positions of this forward's query rows."""
        return self.forward.positions_on(self.device)

    @cached_property
    def text_rows(self) -> torch.Tensor:
        """``(B, q)`` bool: instruction / generated query rows (CLVA's ``T_txt``)."""
        if self.forward.kv_offset >= self.layout.prompt_len:  # only generated rows: all text
            return self.forward.shared(("text_rows", id(self.layout)), lambda: torch.ones(
                self.layout.batch_size, self.forward.q_len, dtype=torch.bool, device=self.device))
        return self.forward.shared(("text_rows", id(self.layout)), lambda: self.layout.text_rows(self.positions))

    @cached_property
    def visual_rows(self) -> torch.Tensor:
        """``(B, q)`` bool: query rows that are visual tokens (prefill only)."""
        return self.forward.shared(("visual_rows", id(self.layout)),
                                   lambda: self.layout.visual_rows(self.positions))

    @property
    def kv_len(self) -> int:
        return self.forward.kv_offset + self.forward.q_len

    @cached_property
    def visual_keys(self) -> torch.Tensor:
        """``(B, kv)`` bool: key columns that are visual tokens."""
        return self.layout.visual_keys(self.kv_len)


class HiddenEvent(LayerEvent):
    """``lm.layers.{i}.in``: ``hidden`` ``(B, q, d)``; assign a new tensor to edit (same shape; moved to the
    hidden states' device and dtype)."""

    def __init__(self, hidden: torch.Tensor, **kw):
        super().__init__(**kw)
        self._hidden = hidden

    @property
    def hidden(self) -> torch.Tensor:
        return self._hidden

    @hidden.setter
    def hidden(self, new: torch.Tensor) -> None:
        old = self._hidden
        self._hidden = _conform(f"layer {self.layer}: hidden", new, old.shape, old.device, old.dtype)


class KVEvent(LayerEvent):
    """``lm.layers.{i}.attn.kv``: ``key`` / ``value`` ``(B, Hkv, kv, D)`` as the kernel sees them; assign to edit
    (same shape; moved to their device and dtype)."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor, **kw):
        super().__init__(**kw)
        self._key, self._value = key, value

    @property
    def key(self) -> torch.Tensor:
        return self._key

    @key.setter
    def key(self, new: torch.Tensor) -> None:
        old = self._key
        self._key = _conform(f"layer {self.layer}: key", new, old.shape, old.device, old.dtype)

    @property
    def value(self) -> torch.Tensor:
        return self._value

    @value.setter
    def value(self, new: torch.Tensor) -> None:
        old = self._value
        self._value = _conform(f"layer {self.layer}: value", new, old.shape, old.device, old.dtype)


class BiasEvent(LayerEvent):
    """``lm.layers.{i}.attn.scores``: collects additive logit biases.

    Each term is a per-key bias ``(B, 1|H, kv)`` plus the ``(B, q)`` bool mask of query rows it applies to. The
    bias is moved to the model's device and dtype (``-inf`` entries stay ``-inf``: they mask a key; the core
    clamps the summed mask at the dtype's finite minimum).
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.terms: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, column_bias: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Add ``column_bias`` ``(B, 1|H, kv)`` (or ``(B, kv)``) to the logits of the query rows ``rows``
        ``(B, q)`` (default: :attr:`text_rows`)."""
        if not isinstance(column_bias, torch.Tensor):
            raise TypeError(f"layer {self.layer}: bias must be a torch.Tensor, got {type(column_bias).__name__}")
        if column_bias.dim() == 2:
            column_bias = column_bias[:, None, :]
        heads = column_bias.shape[1] if column_bias.dim() == 3 else -1
        if column_bias.dim() != 3 or column_bias.shape[-1] != self.kv_len or \
                column_bias.shape[0] != self.layout.batch_size or heads not in (1, self.model.num_heads):
            raise ValueError(f"layer {self.layer}: bias must be (B={self.layout.batch_size}, 1|H={self.model.num_heads},"
                             f" kv={self.kv_len}), got {tuple(column_bias.shape)}")
        if column_bias.device != self.device or column_bias.dtype != self.dtype:
            # converted once per forward: a method that hands the same tensor to several layers keeps one term id,
            # so the layers share the summed mask (the memo holds the source too, so its id is not reused)
            src = column_bias
            column_bias = self.forward.shared(("bias_to", id(src), self.dtype), lambda: (
                src, src.to(device=self.device, dtype=self.dtype)))[1]
        if rows is None:  # the text rows: the same tensor for every layer of this forward
            rows = self.text_rows
            nonempty = self.forward.shared(("text_rows_nonempty", id(self.layout)), lambda: bool(rows.any()))
        else:
            if tuple(rows.shape) != (self.layout.batch_size, self.forward.q_len):
                raise ValueError(f"layer {self.layer}: bias rows must be a (B={self.layout.batch_size}, "
                                 f"q={self.forward.q_len}) bool mask, got {tuple(rows.shape)}")
            if rows.device != self.device or rows.dtype != torch.bool:
                rows = rows.to(device=self.device, dtype=torch.bool)
            nonempty = bool(rows.any())
        if nonempty:
            self.terms.append((column_bias, rows))


class ProbsEvent(LayerEvent):
    """``lm.layers.{i}.attn.probs``: ``probs`` ``(B, H, R, kv)`` float32 of the rows ``rows`` ``(R,)`` (indices
    into q). An edit (``event.probs = new``) keeps the shape and is stored as float32 on the model's device."""

    def __init__(self, probs: torch.Tensor, rows: torch.Tensor, **kw):
        super().__init__(**kw)
        self._probs, self.rows, self.edited = probs, rows, False

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
        if kind == "last":
            return (self.rows == q - 1)[None, :].expand(B, -1)
        if kind == "text":
            return self.text_rows[:, self.rows]
        raise ValueError(f"unknown row kind {kind!r}")

    def last(self) -> torch.Tensor:
        """``(B, H, kv)``: the last query row (final prompt token at prefill, the new token at decode)."""
        if self.forward.q_len == 1:  # a decode step: the probed row is the single row
            return self._probs[:, :, 0]
        idx = (self.rows == self.forward.q_len - 1).nonzero()
        if idx.numel() == 0:
            raise LookupError(f"layer {self.layer}: the last row was not probed; declare rows='last'")
        return self._probs[:, :, int(idx[0, 0])]

    def visual_last(self) -> torch.Tensor:
        """``(B, H, n_max)`` float32: the last row's attention over each row's visual tokens, in the slots of
        :attr:`visual` (padded slots 0)."""
        from hallufix.capture import gather_visual

        return gather_visual(self.last(), self.visual)


class HeadsEvent(LayerEvent):
    """``lm.layers.{i}.attn.heads``: ``output`` ``(B, q, H, D)``; :meth:`scale` multiplies per-head gains."""

    def __init__(self, output: torch.Tensor, fold: Callable[[torch.Tensor], None] | None = None,
                 done: Callable[[], None] | None = None, **kw):
        super().__init__(**kw)
        self._output, self._fold, self._done = output, fold, done

    def fold(self, gains: torch.Tensor) -> None:
        """Fold gains ``(H,)`` into ``o_proj`` for the rest of this generation (exact, restored afterwards).

        ``o_proj`` runs right after this hook, so the fold already applies to this forward's output (do not also
        :meth:`scale`). Use for gains frozen at prefill: later forwards need no hook at all. Folding implies
        :meth:`done`."""
        self._fold(gains)

    def done(self) -> None:
        """Say at prefill that this method needs no further call at this layer in this generation (e.g. its gains
        are all 1). When it is the layer's only decode-time hook, decode steps then skip the layer's hook entirely;
        otherwise the method is still called and must keep returning early itself."""
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
        shape = gains.shape
        if shape != out.shape[2:3] and shape != (out.shape[0], out.shape[2]):
            B, _, H, _ = out.shape
            raise ValueError(f"layer {self.layer}: gains must be (H={H},) or (B={B}, H={H}), got {tuple(shape)}")
        g = gains.to(out.dtype) if gains.device == out.device else gains.to(device=out.device, dtype=out.dtype)
        g = g[None, None, :, None] if len(shape) == 1 else g[:, None, :, None]
        self._output = out * g


class LogitsEvent:
    """``lm.logits``: ``scores`` ``(B, V)`` of the next token and ``input_ids`` ``(B, cur_len)``; assign
    ``scores`` to edit (same shape; moved to their device and dtype)."""

    def __init__(self, scores: torch.Tensor, input_ids: torch.Tensor, forward: ForwardInfo | None,
                 layout: TokenLayout):
        self._scores, self.input_ids, self.forward, self.layout = scores, input_ids, forward, layout

    @property
    def scores(self) -> torch.Tensor:
        return self._scores

    @scores.setter
    def scores(self, new: torch.Tensor) -> None:
        old = self._scores
        self._scores = _conform("logits", new, old.shape, old.device, old.dtype)

    @property
    def device(self) -> torch.device:
        return self._scores.device

    @property
    def visual(self) -> VisualTokens:
        return self.layout.visual_tokens


class ImageEvent:
    """``input.image``: the batch's images before the processor.

    Attributes:
        images: list of RGB ``PIL.Image`` (one per row); replace entries to edit (chained in typed order).
        questions: the user texts.
        extra_images: per row, images appended after the (edited) main image, e.g. a crop or the original.
        capture: ``capture(images, questions, layers=..., hidden_norms=False, token_to_patch=False,
            text_mass=False)`` runs an
            analysis prefill (fresh cache, no generation, other methods inactive) and returns a
            :class:`hallufix.capture.PrefillCapture`.
        cell_index: pixel -> visual-token cell map of an image (see :meth:`cell_index`).
    """

    def __init__(self, images: list, questions: list[str], model: ModelInfo, capture: Callable[..., Any],
                 geometry: Callable[..., Any] | None = None):
        self.images, self.questions, self.model, self.capture = list(images), questions, model, capture
        self.extra_images: list[list] = [[] for _ in images]
        self._geometry = geometry

    def cell_index(self, image, grid: tuple[int, int] | None = None):
        """``(H, W)`` int array mapping each pixel of ``image`` to its visual-token cell (raster index on ``grid``;
        ``-1`` where the processor crops it away). ``grid`` defaults to the grid the processor gives this image
        (the language model's token grid; pass InstructBLIP's patch grid explicitly)."""
        return self._geometry(image, grid)
