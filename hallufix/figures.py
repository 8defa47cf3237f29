"""Attention figures: head matrices, per-layer maps over the image, drift curves, method on vs off, layer masking.

The overlay itself is pure PIL/numpy (:func:`overlay`), so its alignment is testable without matplotlib;
composite figures need the optional ``plots`` extra (``pip install 'hallufix[plots]'``). Every figure is written as
PNG (110 dpi) with a PDF and an SVG beside it (:func:`save`), for papers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def require_matplotlib():
    """Import matplotlib (Agg backend) or fail with the install command."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise RuntimeError("figures need matplotlib: pip install 'hallufix[plots]' (or pip install matplotlib)")
    return plt


FORMATS = ("png", "pdf", "svg")


def save(fig, path: Path) -> list[Path]:
    """Write ``fig`` to ``path`` (PNG) and to the same stem as PDF and SVG; close it. Returns the paths."""
    plt = require_matplotlib()
    path = Path(path)
    written = []
    for ext in FORMATS:
        target = path.with_suffix(f".{ext}")
        fig.savefig(target, dpi=110, bbox_inches="tight")
        written.append(target)
    plt.close(fig)
    return written


def ramp(heat: np.ndarray) -> np.ndarray:
    """The overlay's colour ramp: blue (0) -> yellow (0.5) -> red (1); ``(..., 3)`` floats in [0, 1]."""
    return np.stack([np.clip(2 * heat, 0, 1), np.clip(2 - 2 * heat, 0, 1) * np.clip(2 * heat, 0, 1),
                     np.clip(1 - 2 * heat, 0, 1)], -1)


def ramp_colormap(alpha: float = 0.7):
    """:func:`ramp` as a matplotlib colormap with the overlay's opacity (``alpha * value``), so the colour bar
    beside overlays shows what a value looks like on the image."""
    require_matplotlib()
    from matplotlib.colors import ListedColormap

    v = np.linspace(0, 1, 256)
    return ListedColormap(np.concatenate([ramp(v), (alpha * v)[:, None]], 1), name="hallufix-overlay")


def upsample(cell_values: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Cell values ``(rows*cols,)`` in raster order -> ``(H, W)`` array, each cell a block of pixels (nearest), so a
    cell maps exactly onto the image region its visual token covers. ``size`` is ``(W, H)``."""
    rows, cols = grid
    arr = np.asarray(cell_values, dtype=np.float64).reshape(rows, cols)
    W, H = size
    ri = np.minimum((np.arange(H) * rows) // H, rows - 1)
    ci = np.minimum((np.arange(W) * cols) // W, cols - 1)
    return arr[ri][:, ci]


def overlay(view: Image.Image, cell_values, grid: tuple[int, int], alpha: float = 0.7) -> Image.Image:
    """The model's view of the image with the map on top, normalised to [0, 1] (:func:`ramp`: red = high). The
    colour's opacity grows with the value (``alpha * heat``), so low-attention regions show the image itself
    rather than a blue tint."""
    heat = upsample(np.asarray(cell_values), grid, view.size)
    lo, hi = heat.min(), heat.max()
    heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    rgb = np.asarray(view.convert("RGB"), dtype=np.float64) / 255.0
    weight = (alpha * heat)[..., None]
    mixed = (1 - weight) * rgb + weight * ramp(heat)
    return Image.fromarray((mixed.clip(0, 1) * 255).astype(np.uint8))


def head_matrix(phi: np.ndarray, upper: np.ndarray, lower: np.ndarray, path: Path, title: str = "") -> None:
    """Layer x head heatmap of visual attention intensity; sensitive heads marked ``+``, insensitive ``-``."""
    plt = require_matplotlib()
    L, H = phi.shape
    fig, ax = plt.subplots(figsize=(max(4, H * 0.45 + 2), max(3, L * 0.35 + 1.5)))
    im = ax.imshow(phi, aspect="auto", cmap="viridis", origin="upper")
    for layer in range(L):
        for h in range(H):
            if phi[layer, h] > upper[layer]:
                ax.text(h, layer, "+", ha="center", va="center", color="white", fontsize=10, weight="bold")
            elif phi[layer, h] < lower[layer]:
                ax.text(h, layer, "-", ha="center", va="center", color="red", fontsize=12, weight="bold")
    ax.set_xlabel("head")
    ax.set_ylabel("layer (0-based)")
    ax.set_title(title or "visual attention intensity\n+ sensitive, − insensitive (mean ± λ·std per layer)",
                 fontsize=9)
    fig.colorbar(im, ax=ax, label="mean visual mass over text rows")
    fig.tight_layout()
    save(fig, path)


def layer_maps(view: Image.Image, maps: np.ndarray, grid, layers: list[int], path: Path, title: str = "") -> None:
    """A row of overlays, one per layer in ``layers`` (``maps`` is ``(L, n)``)."""
    plt = require_matplotlib()
    n = len(layers)
    cols = min(n, 6)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols + 0.8, 2.5 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(overlay(view, maps[layers[k]], grid))
            ax.set_title(f"layer {layers[k]}", fontsize=9)
    from matplotlib.cm import ScalarMappable

    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92, 0.95))  # room for the title and the colour bar: nothing overlaps
    cax = fig.add_axes((0.93, 0.15, 0.015, 0.7))
    fig.colorbar(ScalarMappable(cmap=ramp_colormap()), cax=cax,
                 label="attention to the cell (0 = panel min, 1 = max)")
    save(fig, path)


def curves(values: dict[str, list[float]], path: Path, title: str = "",
           compare: dict[str, list[float]] | None = None, labels: tuple[str, str] = ("method off", "method on"),
           anchors: list[int] | None = None) -> None:
    """Per-layer curves, one panel per quantity (x: layer, y: the quantity); with ``compare`` (the same keys, e.g.
    the method on) both curves share each panel's axis, labelled in a legend; ``anchors``: layers marked with a
    dashed vertical line (the layers the method's config names)."""
    plt = require_matplotlib()
    keys = list(values)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.0), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        ax.plot(range(len(values[k])), values[k], marker="o", ms=3, label=labels[0])
        if compare is not None and k in compare:
            ax.plot(range(len(compare[k])), compare[k], marker="s", ms=3, label=labels[1])
        for i, layer in enumerate(anchors or ()):
            ax.axvline(layer, color="tab:red", ls="--", alpha=0.6, label="anchor layer" if i == 0 else None)
        ax.set_title(k.replace("_", " "), fontsize=9)
        ax.set_xlabel("layer (0-based)")
        ax.set_ylabel(k.replace("_", " "), fontsize=8)
        ax.grid(alpha=0.3)
    if compare is not None or anchors:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save(fig, path)


def wilson(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``p`` over ``n`` trials."""
    if n == 0:
        return (0.0, 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(centre - half), float(centre + half))


def masking_curve(accuracy: list[float], baseline: float, suggestion: dict, path: Path, title: str = "",
                  n: int | None = None) -> None:
    """Accuracy with visual tokens hidden at one layer at a time, against the unmasked baseline; with ``n`` (the
    number of questions) each point carries its 95% Wilson interval as an error bar."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(6, 3))
    if n:
        bounds = np.array([wilson(a, n) for a in accuracy])
        err = np.stack([np.asarray(accuracy) - bounds[:, 0], bounds[:, 1] - np.asarray(accuracy)]).clip(min=0)
        ax.errorbar(range(len(accuracy)), accuracy, yerr=err, marker="o", ms=3, capsize=2,
                    label=f"visual tokens hidden at this layer (95% Wilson, n={n})")
    else:
        ax.plot(range(len(accuracy)), accuracy, marker="o", label="visual tokens hidden at this layer")
    ax.axhline(baseline, color="gray", ls="--", label="no masking")
    for layer in suggestion.get("fusion_layers", []):
        ax.axvline(layer, color="tab:green", alpha=0.3)
    if suggestion.get("review_layer") is not None:
        ax.axvline(suggestion["review_layer"], color="tab:red", alpha=0.5, label="suggested review layer")
    ax.set_xlabel("layer (0-based)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "layer-wise visual masking (green: suggested fusion layers)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)
