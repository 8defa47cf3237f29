"""Where each batch row's visual tokens are: :class:`VisualTokens`, the one description of a batch's visual tokens
that the core and every method share (built once per batch from the :class:`~hallufix.layout.TokenLayout`).

Rows may hold different numbers of visual tokens (Qwen2-VL / Qwen2.5-VL give every image its own grid; a method
may feed a second image). Per-row values over visual tokens are therefore stored *padded*: ``(B, ..., n_max)``
with ``valid (B, n_max)`` marking each row's real slots. Slot ``j < counts[b]`` of row ``b`` is that row's
``j``-th visual token in prompt order (images in order, each in raster order of its grid). Padded slots are inert:
:mod:`hallufix.capture` gathers 0 into them, ignores them in every statistic and never scatters them back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class VisualTokens:
    """The visual tokens of one padded batch (device: the model's; built once per batch, read-only).

    Attributes:
        index: ``(B, n_max)`` long: prompt (= key) position of each slot; padded slots hold 0 (gather from any
            column, then masked).
        valid: ``(B, n_max)`` bool: real slots.
        counts: ``(B,)`` long: visual tokens per row (on the model's device).
        n: ``tuple`` of per-row counts as Python ints (host; no device sync to read).
        grids: per row, per image, the ``(rows, cols)`` token grid (``None`` where the family has none, e.g.
            InstructBLIP's query tokens).
        ranges: per row, per image, the half-open slot range ``(a, b)`` of that image's tokens (``0 <= a < b <=
            n[row]``).
        prompt_len: ``P``, the prompt length (visual keys never sit at or after it).
        scatter_index: ``(B, n_max)`` like ``index`` but padded slots point at the dump column ``P`` (see
            :func:`hallufix.capture.scatter_visual`), so a scatter never overwrites a real key.
    """

    index: torch.Tensor
    valid: torch.Tensor
    counts: torch.Tensor
    n: tuple
    grids: tuple
    ranges: tuple
    prompt_len: int
    scatter_index: torch.Tensor
    #: every row holds the same number of visual tokens (no padded slot: the plain, faster reductions apply)
    uniform: bool = True

    @classmethod
    def from_layout(cls, layout) -> "VisualTokens":
        """Build from a :class:`~hallufix.layout.TokenLayout` (one host read of the per-row counts)."""
        vis = layout.visual  # (B, P)
        B, P = vis.shape
        pos = torch.arange(P, device=vis.device).expand(B, P)
        # visual positions first, in prompt order (stable sort on "not visual"), padded with P
        keyed = torch.where(vis, pos, torch.full_like(pos, P))
        ordered = keyed.sort(dim=1, stable=True).values
        counts = vis.sum(1)
        n = tuple(int(c) for c in counts.tolist())
        n_max = max(n) if n else 0
        ordered = ordered[:, :n_max]
        valid = ordered < P
        index = torch.where(valid, ordered, torch.zeros_like(ordered))
        grids = tuple(tuple(g) for g in (layout.grids or [[] for _ in range(B)]))
        ranges = tuple(_image_ranges(layout, b, n[b], grids[b] if b < len(grids) else ()) for b in range(B))
        return cls(index, valid, counts, n, grids, ranges, P, ordered, len(set(n)) <= 1)

    # ------------------------------------------------------------------ facts
    @property
    def batch_size(self) -> int:
        return self.index.shape[0]

    @property
    def n_max(self) -> int:
        return self.index.shape[1]

    @property
    def device(self) -> torch.device:
        return self.index.device

    def image_slots(self, row: int, image: int = 0) -> slice:
        """The slots of ``image`` in ``row`` (index a ``(..., n_max)`` row of values with it)."""
        a, b = self.ranges[row][image]
        return slice(a, b)

    def grid(self, row: int, image: int = 0) -> tuple[int, int] | None:
        """The token grid of ``image`` in ``row`` (``None`` where the family has no spatial grid)."""
        g = self.grids[row] if row < len(self.grids) else ()
        return g[image] if image < len(g) else None

    def images(self, row: int) -> int:
        return len(self.ranges[row])


def _image_ranges(layout, row: int, count: int, grids) -> tuple:
    """Slot ranges per image of one row: from the grids when they account for every token, else from the runs of
    visual positions in the prompt, else one range over the row."""
    sizes = [g[0] * g[1] for g in grids if g is not None]
    if grids and len(sizes) == len(grids) and sum(sizes) == count:
        out, a = [], 0
        for s in sizes:
            out.append((a, a + s))
            a += s
        return tuple(out)
    n_images = max(1, len(grids))
    if n_images > 1:
        runs = _visual_runs(layout.visual[row].tolist())
        if len(runs) == n_images:
            out, a = [], 0
            for r0, r1 in runs:
                out.append((a, a + r1 - r0))
                a += r1 - r0
            return tuple(out)
        if count % n_images == 0:  # adjacent runs of equal images (a fixed token count per image)
            k = count // n_images
            return tuple((i * k, (i + 1) * k) for i in range(n_images))
    return ((0, count),) if count else ()


def _visual_runs(is_visual: list[bool]) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` position ranges of the consecutive visual tokens of one prompt row."""
    runs, start = [], None
    for i, v in enumerate(is_visual + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i))
            start = None
    return runs
