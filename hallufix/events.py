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

from hallufix.forward import ConvertedKey, ForwardInfo, Ref, RoleKey
from hallufix.layout import ModelInfo, TokenLayout
from hallufix.visual import VisualTokens

__all__ = ["ForwardInfo", "BatchInfo", "LayerEvent", "HiddenEvent", "KVEvent", "BiasEvent", "ProbsEvent",
           "HeadsEvent", "StaticGainsEvent", "LogitsEvent", "ImageEvent"]

#: the classes that live in :mod:`hallufix.attn_events` (imported from here lazily: that module builds on this one)
_ATTN_EVENTS = ("ProbsEvent", "HeadsEvent", "StaticGainsEvent")


def __getattr__(name: str):
    if name in _ATTN_EVENTS:
        from hallufix import attn_events

        return getattr(attn_events, name)
    raise AttributeError(f"module 'hallufix.events' has no attribute {name!r}")


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
class BatchInfo:
    """A batch being generated: model facts, the questions, and (once the processor ran) the token layout.

    ``hallufix_batch_start`` receives it before the image hook, so ``layout`` is ``None`` there (the images, which
    decide the layout, may still change); from the first forward to ``hallufix_batch_end`` it is the batch's
    :class:`~hallufix.layout.TokenLayout`. ``diagnostics[row]`` is filled from what each method's
    ``hallufix_batch_end`` returns, under the method's name. ``beams``: rows every forward carries per question
    (``num_beams`` under beam search, where question ``b``'s beams are rows ``b * beams .. b * beams + beams - 1``
    and reorder among themselves at every step; else 1)."""

    model: ModelInfo
    layout: TokenLayout | None
    questions: list[str]
    diagnostics: list[dict] = field(default_factory=list)
    beams: int = 1

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
        key = RoleKey("text_rows", Ref(self.layout))
        if self.forward.kv_offset >= self.layout.prompt_len:  # only generated rows: all text
            return self.forward.shared(key, lambda: torch.ones(
                self.layout.batch_size, self.forward.q_len, dtype=torch.bool, device=self.device))
        return self.forward.shared(key, lambda: self.layout.text_rows(self.positions))

    @cached_property
    def visual_rows(self) -> torch.Tensor:
        """``(B, q)`` bool: query rows that are visual tokens (prefill only)."""
        return self.forward.shared(RoleKey("visual_rows", Ref(self.layout)),
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
            column_bias = self.forward.shared(ConvertedKey(Ref(src), self.dtype),
                                              lambda: src.to(device=self.device, dtype=self.dtype))
        if rows is None:  # the text rows: the same tensor for every layer of this forward
            rows = self.text_rows
            nonempty = self.forward.shared(RoleKey("text_rows_nonempty", Ref(self.layout)), lambda: bool(rows.any()))
        else:
            if tuple(rows.shape) != (self.layout.batch_size, self.forward.q_len):
                raise ValueError(f"layer {self.layer}: bias rows must be a (B={self.layout.batch_size}, "
                                 f"q={self.forward.q_len}) bool mask, got {tuple(rows.shape)}")
            if rows.device != self.device or rows.dtype != torch.bool:
                rows = rows.to(device=self.device, dtype=torch.bool)
            nonempty = bool(rows.any())
        if nonempty:
            self.terms.append((column_bias, rows))


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
