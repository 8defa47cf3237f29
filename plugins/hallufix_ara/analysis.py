"""ARA pass-1 analysis as plain functions over one sample's captured attention (the steps are listed in
``docs/methods/ara.md``).

Inputs per candidate layer l: ``a[l]`` ``(H, n)`` the last prompt row's attention over the n visual tokens per head
(or query tokens for InstructBLIP), and ``norms[l]`` ``(n,)`` the visual tokens' input hidden-state norms.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LayerMaps:
    """Per-layer results: image-centric heads, the layer map (sinks zeroed, renormalised), sharpness, confidence."""

    heads: dict = field(default_factory=dict)       # layer -> list of head indices
    maps: dict = field(default_factory=dict)        # layer -> (n,) map
    sharpness: dict = field(default_factory=dict)
    confidence: dict = field(default_factory=dict)
    sinks: dict = field(default_factory=dict)       # layer -> (n,) bool


def sink_tokens(norms: np.ndarray, ratio: float) -> np.ndarray:
    """Massive-activation sinks: hidden-state norm above ``ratio`` x the median norm."""
    return norms > ratio * np.median(norms)


def layer_maps(a: dict, norms: dict, sink_ratio: float, head_ratio: float,
               keep_heads: dict | None = None) -> LayerMaps:
    """Steps 2-5: sinks, image-centric heads (non-sink share >= head_ratio and mass >= the layer's median mass),
    per-layer map, sharpness = 1 - H(m)/log n', confidence = mean pairwise cosine of the heads' maps (top-5% mass of
    the map for a single head). ``keep_heads`` (optional) restricts heads per layer (the generic-prompt test)."""
    out = LayerMaps()
    for layer in sorted(a):
        att = np.asarray(a[layer], dtype=np.float64)  # (H, n)
        sinks = sink_tokens(np.asarray(norms[layer], dtype=np.float64), sink_ratio)
        mass = att.sum(-1)
        nonsink = att[:, ~sinks].sum(-1) / np.maximum(mass, 1e-12)
        heads = [h for h in range(att.shape[0]) if nonsink[h] >= head_ratio and mass[h] >= np.median(mass)]
        if keep_heads is not None:
            heads = [h for h in heads if h in keep_heads.get(layer, heads)]
        out.sinks[layer] = sinks
        if not heads:
            continue
        bar = att[heads] * (~sinks)[None]
        bar = bar / np.maximum(bar.sum(-1, keepdims=True), 1e-12)
        m = bar.mean(0)
        m = m / max(m.sum(), 1e-12)
        n_eff = int((~sinks).sum())
        p = m[~sinks]
        ent = -(p[p > 0] * np.log(p[p > 0])).sum()
        out.heads[layer], out.maps[layer] = heads, m
        out.sharpness[layer] = 1.0 - ent / np.log(n_eff) if n_eff > 1 else 0.0
        if len(heads) > 1:
            unit = bar / np.maximum(np.linalg.norm(bar, axis=-1, keepdims=True), 1e-12)
            cos = unit @ unit.T
            k = len(heads)
            out.confidence[layer] = float((cos.sum() - np.trace(cos)) / (k * (k - 1)))
        else:
            top = max(1, int(np.ceil(0.05 * len(m))))
            out.confidence[layer] = float(np.sort(m)[::-1][:top].sum())
    return out


def _z(values: np.ndarray) -> np.ndarray:
    sd = values.std()
    return (values - values.mean()) / sd if sd > 0 else np.zeros_like(values)


def fuse(lm: LayerMaps, top_k: int, temperature: float) -> tuple[dict, list[int], np.ndarray | None]:
    """Step 5-6: scores z(sharpness) + z(confidence) over the layers with maps; top-K fused with softmax(score/T).
    Returns ``(scores, selected layers, fused map)``."""
    layers = sorted(lm.maps)
    if not layers:
        return {}, [], None
    sh = np.array([lm.sharpness[l] for l in layers])
    cf = np.array([lm.confidence[l] for l in layers])
    score = _z(sh) + _z(cf)
    scores = dict(zip(layers, score.tolist()))
    order = sorted(layers, key=lambda l: (-scores[l], l))[:top_k]
    s = np.array([scores[l] for l in order]) / temperature
    w = np.exp(s - s.max())
    w = w / w.sum()
    fused = sum(wi * lm.maps[l] for wi, l in zip(w, order))
    return scores, order, fused


def coverage_mask(values: np.ndarray, grid: tuple[int, int], coverage: float, dilation: int) -> np.ndarray:
    """Step 7.2-7.3: the smallest set of cells holding >= ``coverage`` of the mass, dilated by ``dilation`` cells
    (square neighbourhood). Returns a ``grid``-shaped 0/1 float array."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(-v, kind="stable")
    cum = np.cumsum(v[order]) / max(v.sum(), 1e-12)
    k = int(np.searchsorted(cum, coverage - 1e-12) + 1)
    keep = np.zeros(v.size)
    keep[order[:k]] = 1.0
    cells = keep.reshape(grid)
    if dilation > 0:
        padded = np.pad(cells, dilation)
        out = np.zeros_like(cells)
        for dy in range(2 * dilation + 1):
            for dx in range(2 * dilation + 1):
                out = np.maximum(out, padded[dy:dy + grid[0], dx:dx + grid[1]])
        cells = out
    return cells


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (edge-replicated borders, radius ceil(3 sigma))."""
    if sigma <= 0:
        return img
    r = int(np.ceil(3 * sigma))
    x = np.arange(-r, r + 1)
    k = np.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    p = np.pad(img, r, mode="edge")
    rows = sum(k[i] * p[:, i:i + img.shape[1]] for i in range(2 * r + 1))
    return sum(k[i] * rows[i:i + img.shape[0], :] for i in range(2 * r + 1))


def pixel_mask(cells: np.ndarray, cell_index: np.ndarray, feather_cells: float,
               upsample: str = "nearest") -> np.ndarray:
    """Step 7.4-7.5: the cell mask on the original image's pixels (cropped-away pixels keep 1: the model does not
    see them), feathered with sigma = ``feather_cells`` x the cell size in pixels. ``upsample``: ``nearest`` gives
    each pixel its cell's value; ``bilinear`` interpolates between cell centres (:func:`bilinear_cells`)."""
    flat = cells.reshape(-1)
    if upsample == "bilinear":
        B = np.where(cell_index >= 0, bilinear_cells(cells, cell_index), 1.0)
    else:
        B = np.where(cell_index >= 0, flat[np.clip(cell_index, 0, None)], 1.0)
    H, W = cell_index.shape
    cell_px = min(H / cells.shape[0], W / cells.shape[1])
    return np.clip(gaussian_blur(B, feather_cells * cell_px), 0.0, 1.0)


def _cell_coordinate(cell_of: np.ndarray, n_cells: int) -> np.ndarray:
    """Per pixel line (``cell_of (W,)``: the cell column of each image column, -1 where cropped away): the
    continuous cell coordinate of the line's centre, ``c + (x - x0 + 0.5) / (x1 - x0)`` for the cell's span
    ``[x0, x1)`` (cell centres sit at ``c + 0.5``)."""
    coord = np.zeros(cell_of.shape, dtype=np.float64)
    for c in range(n_cells):
        xs = np.nonzero(cell_of == c)[0]
        if xs.size:
            coord[xs] = c + (xs - xs.min() + 0.5) / (xs.max() - xs.min() + 1)
    return coord


def bilinear_cells(cells: np.ndarray, cell_index: np.ndarray) -> np.ndarray:
    """Bilinear upsampling of ``cells (rows, cols)`` onto the pixels of ``cell_index (H, W)`` (the processor's
    pixel -> cell map; -1 for cropped-away pixels): values interpolate between cell centres and are constant from
    the outermost centres to the border (``align_corners=False`` with edge clamping). Cells are axis-aligned
    rectangles of the image for every family, so the interpolation is separable. -> ``(H, W)``."""
    rows, cols = cells.shape
    visible = cell_index >= 0
    col_of = np.where(visible, cell_index % cols, -1).max(0)   # (W,) cell column of each image column
    row_of = np.where(visible, cell_index // cols, -1).max(1)  # (H,) cell row of each image row

    def weights(coord, n):
        p = np.clip(coord - 0.5, 0, n - 1)
        i0 = np.floor(p).astype(int)
        i1 = np.minimum(i0 + 1, n - 1)
        return i0, i1, p - i0

    c0, c1, wc = weights(_cell_coordinate(col_of, cols), cols)
    r0, r1, wr = weights(_cell_coordinate(row_of, rows), rows)
    across = cells[:, c0] * (1 - wc) + cells[:, c1] * wc          # (rows, W)
    return across[r0] * (1 - wr)[:, None] + across[r1] * wr[:, None]  # (H, W)
