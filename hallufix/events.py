"""The objects hooks receive. Each carries the current value of its hook point (edits chain through it) and the
token layout needed to interpret rows and columns.

Shapes: ``B`` batch, ``H`` query heads, ``Hkv`` key/value heads, ``q`` query rows of this forward, ``kv`` keys,
``D`` head dim, ``d`` hidden size, ``R`` probed rows, ``V`` vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import torch

from hallufix.layout import ModelInfo, TokenLayout


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
        return torch.arange(self.kv_offset, self.kv_offset + self.q_len)

    def shared(self, key, make):
        """``make()`` once per forward under ``key``; later layers of the same forward get the same tensor."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]


@dataclass
class BatchInfo:
    """A batch being generated: its layout, model facts, and per-row diagnostics to fill at batch end.

    ``stash`` is per-run storage keyed by method name (``batch.stash["clva"]``) that survives across batches.
    """

    model: ModelInfo
    layout: TokenLayout
    questions: list[str]
    diagnostics: list[dict] = field(default_factory=list)
    stash: dict = field(default_factory=dict)


class LayerEvent:
    """Base of per-layer events: ``layer``, ``forward``, ``layout`` and role masks for this forward's rows."""

    def __init__(self, layer: int, forward: ForwardInfo, layout: TokenLayout, model: ModelInfo, stash: dict):
        self.layer, self.forward, self.layout, self.model, self.stash = layer, forward, layout, model, stash

    @cached_property
    def positions(self) -> torch.Tensor:
        """``(q,)`` cache positions of this forward's query rows."""
        return self.forward.positions.to(self.layout.input_ids.device)

    @cached_property
    def text_rows(self) -> torch.Tensor:
        """``(B, q)`` bool: instruction / generated query rows (CLVA's ``T_txt``)."""
        if self.forward.kv_offset >= self.layout.prompt_len:  # only generated rows: all text
            return self.forward.shared(("text_rows", id(self.layout)), lambda: torch.ones(
                self.layout.batch_size, self.forward.q_len, dtype=torch.bool, device=self.layout.input_ids.device))
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
    """``lm.layers.{i}.in``: ``hidden`` ``(B, q, d)``; assign a new tensor to edit."""

    def __init__(self, hidden: torch.Tensor, **kw):
        super().__init__(**kw)
        self.hidden = hidden


class KVEvent(LayerEvent):
    """``lm.layers.{i}.attn.kv``: ``key`` / ``value`` ``(B, Hkv, kv, D)`` as the kernel sees them; assign to edit."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor, **kw):
        super().__init__(**kw)
        self.key, self.value = key, value


class BiasEvent(LayerEvent):
    """``lm.layers.{i}.attn.scores``: collects additive logit biases.

    Each term is a per-key bias ``(B, 1|H, kv)`` plus the ``(B, q)`` bool mask of query rows it applies to.
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.terms: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, column_bias: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Add ``column_bias`` ``(B, 1|H, kv)`` (or ``(B, kv)``) to the logits of the query rows ``rows``
        ``(B, q)`` (default: :attr:`text_rows`)."""
        if column_bias.dim() == 2:
            column_bias = column_bias[:, None, :]
        if column_bias.shape[-1] != self.kv_len or column_bias.shape[0] != self.layout.batch_size:
            raise ValueError(f"layer {self.layer}: bias must be (B={self.layout.batch_size}, 1|H, kv={self.kv_len}),"
                             f" got {tuple(column_bias.shape)}")
        if rows is None:  # the text rows: the same tensor for every layer of this forward
            rows = self.text_rows
            nonempty = self.forward.shared(("text_rows_nonempty", id(self.layout)), lambda: bool(rows.any()))
        else:
            nonempty = bool(rows.any())
        if nonempty:
            self.terms.append((column_bias, rows))


class ProbsEvent(LayerEvent):
    """``lm.layers.{i}.attn.probs``: ``probs`` ``(B, H, R, kv)`` of the rows ``rows`` ``(R,)`` (indices into q)."""

    def __init__(self, probs: torch.Tensor, rows: torch.Tensor, **kw):
        super().__init__(**kw)
        self._probs, self.rows, self.edited = probs, rows, False

    @property
    def probs(self) -> torch.Tensor:
        return self._probs

    @probs.setter
    def probs(self, new: torch.Tensor) -> None:
        if new.shape != self._probs.shape:
            raise ValueError(f"layer {self.layer}: edited probs must keep shape {tuple(self._probs.shape)}")
        self._probs, self.edited = new, True

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
        """``(B, H, n_vis)``: the last row's attention over the visual keys, columns in prompt order.

        Requires the same number of visual tokens in every batch row (true for LLaVA / InstructBLIP, and for
        Qwen batches of same-size images); otherwise use :meth:`last` with :attr:`visual_keys` per row.
        """
        last, vis = self.last(), self.visual_keys
        counts = vis.sum(1)
        if not bool((counts == counts[0]).all()):
            raise ValueError("batch rows have different numbers of visual tokens; index per row instead")
        return last[vis[:, None, :].expand_as(last)].view(last.shape[0], last.shape[1], int(counts[0]))


class HeadsEvent(LayerEvent):
    """``lm.layers.{i}.attn.heads``: ``output`` ``(B, q, H, D)``; :meth:`scale` multiplies per-head gains."""

    def __init__(self, output: torch.Tensor, fold: Callable[[torch.Tensor], None] | None = None,
                 done: Callable[[], None] | None = None, **kw):
        super().__init__(**kw)
        self.output, self._fold, self._done = output, fold, done

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

    def scale(self, gains: torch.Tensor) -> None:
        """Multiply head outputs by ``gains`` ``(H,)`` or ``(B, H)``."""
        g = gains.to(self.output.dtype)
        g = g[None, None, :, None] if g.dim() == 1 else g[:, None, :, None]
        self.output = self.output * g


class LogitsEvent:
    """``lm.logits``: ``scores`` ``(B, V)`` of the next token and ``input_ids`` ``(B, cur_len)``."""

    def __init__(self, scores: torch.Tensor, input_ids: torch.Tensor, forward: ForwardInfo | None,
                 layout: TokenLayout, stash: dict):
        self.scores, self.input_ids, self.forward, self.layout, self.stash = scores, input_ids, forward, layout, stash


class ImageEvent:
    """``input.image``: the batch's images before the processor.

    Attributes:
        images: list of RGB ``PIL.Image`` (one per row); replace entries to edit (chained in typed order).
        questions: the user texts.
        extra_images: per row, images appended after the (edited) main image, e.g. a crop or the original.
        capture: ``capture(images, questions, layers=..., hidden_norms=False, qformer_attention=False)`` runs an
            analysis prefill (fresh cache, no generation, other methods inactive) and returns a
            :class:`hallufix.capture.PrefillCapture`.
        cell_index: pixel -> visual-token cell map of an image (see :meth:`cell_index`).
        stash: per-run storage keyed by method name.
    """

    def __init__(self, images: list, questions: list[str], model: ModelInfo, capture: Callable[..., Any],
                 stash: dict, geometry: Callable[..., Any] | None = None):
        self.images, self.questions, self.model, self.capture, self.stash = list(images), questions, model, capture, stash
        self.extra_images: list[list] = [[] for _ in images]
        self._geometry = geometry

    def cell_index(self, image, grid: tuple[int, int] | None = None):
        """``(H, W)`` int array mapping each pixel of ``image`` to its visual-token cell (raster index on ``grid``;
        ``-1`` where the processor crops it away). ``grid`` defaults to the grid the processor gives this image
        (the language model's token grid; pass InstructBLIP's patch grid explicitly)."""
        return self._geometry(image, grid)
