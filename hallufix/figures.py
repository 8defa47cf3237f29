"""Attention figures: head matrices, per-layer maps over the image, drift curves, method on vs off, layer masking.

The overlay itself is pure PIL/numpy (:func:`overlay`), so its alignment is testable without matplotlib;
composite figures need the optional ``plots`` extra (``pip install 'hallufix[plots]'``).
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


def upsample(cell_values: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Cell values ``(rows*cols,)`` in raster order -> ``(H, W)`` array, each cell a block of pixels (nearest), so a
    cell maps exactly onto the image region its visual token covers. ``size`` is ``(W, H)``."""
    rows, cols = grid
    arr = np.asarray(cell_values, dtype=np.float64).reshape(rows, cols)
    W, H = size
    ri = np.minimum((np.arange(H) * rows) // H, rows - 1)
    ci = np.minimum((np.arange(W) * cols) // W, cols - 1)
    return arr[ri][:, ci]


def overlay(view: Image.Image, cell_values, grid: tuple[int, int], alpha: float = 0.55) -> Image.Image:
    """The model's view of the image with the map on top (red = high), normalised to [0, 1]."""
    heat = upsample(np.asarray(cell_values), grid, view.size)
    lo, hi = heat.min(), heat.max()
    heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    gray = np.asarray(view.convert("L"), dtype=np.float64)[..., None] / 255.0 * np.ones(3)
    # a blue -> yellow -> red ramp over a dimmed grey copy of the image, so the map reads on any picture
    color = np.stack([np.clip(2 * heat, 0, 1), np.clip(2 - 2 * heat, 0, 1) * np.clip(2 * heat, 0, 1),
                      np.clip(1 - 2 * heat, 0, 1)], -1)
    mixed = (1 - alpha) * 0.8 * gray + alpha * color
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
    ax.set_title(title or "visual attention intensity\n+ sensitive, − insensitive (mean ± λ·std per layer)", fontsize=9)
    fig.colorbar(im, ax=ax, label="mean visual mass over text rows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def layer_maps(view: Image.Image, maps: np.ndarray, grid, layers: list[int], path: Path, title: str = "") -> None:
    """A row of overlays, one per layer in ``layers`` (``maps`` is ``(L, n)``)."""
    plt = require_matplotlib()
    n = len(layers)
    cols = min(n, 6)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.5 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(overlay(view, maps[layers[k]], grid))
            ax.set_title(f"layer {layers[k]}", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(values: dict[str, list[float]], path: Path, title: str = "") -> None:
    """Per-layer curves, one panel each."""
    plt = require_matplotlib()
    keys = list(values)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        ax.plot(range(len(values[k])), values[k], marker="o", ms=3)
        ax.set_title(k.replace("_", " "), fontsize=9)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def masking_curve(accuracy: list[float], baseline: float, suggestion: dict, path: Path, title: str = "") -> None:
    """Accuracy with visual tokens hidden at one layer at a time, against the unmasked baseline."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(6, 3))
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
