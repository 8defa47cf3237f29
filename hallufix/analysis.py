"""Layer-wise attention analysis behind ``hallufix inspect`` and ``hallufix analyze layer-masking``.

Everything is measured with the same probe hook points the methods use (no eager model): at prefill, every
layer's text rows are probed once; from them come the per-head visual attention intensity (CLVA's Eq. 1), the last
row's map over the visual tokens, its entropy and mass, and the drift correlations.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hallufix import capture as C
from hallufix import hookimpl
from hallufix import points as P


class LayerProbe:
    """Internal probe method: records, per layer at prefill, ``phi (B, H)`` (mean visual mass over the text rows)
    and ``last_map (B, H, n)`` (the last row's attention over the visual tokens). Placed last in a stack, it sees
    the probabilities after every other method's edits (the "method on" view)."""

    name = "hallufix-inspect"

    def __init__(self, layers: list[int] | None = None):
        self.layers = layers
        self.phi: dict[int, torch.Tensor] = {}
        self.last_map: dict[int, torch.Tensor] = {}
        self.grids: list = []

    @hookimpl
    def hallufix_configure(self, model):
        layers = self.layers if self.layers is not None else range(model.num_layers)
        return P.attn_probs(layers, rows="text", phases={"prefill"})

    @hookimpl
    def hallufix_attn_probs(self, event):
        probs = event.probs.float()  # (B, H, R, kv)
        mass = C.visual_mass(probs, event.visual_keys)  # (B, H, R)
        text = event.row_mask("text").float()  # (B, R)
        self.phi[event.layer] = (mass * text[:, None]).sum(-1) / text.sum(-1).clamp(min=1)[:, None]
        self.last_map[event.layer] = C.gather_visual(event.last(), event.visual)  # (B, H, n_max)
        self.visual = event.visual
        self.grids = event.layout.grids


@dataclass
class LayerAnalysis:
    """Per-sample (or averaged) layer-wise measurements, all tensors on CPU.

    Attributes:
        phi: ``(L, H)`` visual attention intensity per head.
        last_map: ``(L, H, n)`` last-row attention over the visual tokens per head.
        grid: ``(rows, cols)`` of the visual tokens, or ``None``.
        lambda_vis: the head-split width used for the sensitive / insensitive thresholds.
    """

    phi: torch.Tensor
    last_map: torch.Tensor
    grid: tuple[int, int] | None
    lambda_vis: float = 1.0
    mid_layer: int = 0
    neg_layer: int = 0
    extras: dict = field(default_factory=dict)

    @property
    def thresholds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L,)`` upper (sensitive) and lower (insensitive) thresholds: mean ± lambda·std within each layer."""
        mu, sd = self.phi.mean(1), self.phi.std(1, unbiased=False)
        return mu + self.lambda_vis * sd, mu - self.lambda_vis * sd

    def head_sets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, H)`` bool: sensitive and insensitive heads."""
        hi, lo = self.thresholds
        return self.phi > hi[:, None], self.phi < lo[:, None]

    def mean_map(self, heads: torch.Tensor | None = None) -> torch.Tensor:
        """``(L, n)`` last-row map averaged over all heads or a per-layer head subset ``(L, H)`` bool."""
        if heads is None:
            return self.last_map.mean(1)
        w = heads.float()
        return (self.last_map * w[..., None]).sum(1) / w.sum(1).clamp(min=1)[:, None]

    def curves(self) -> dict[str, list[float]]:
        """Per-layer curves: entropy and visual mass of the last row's head-averaged map, and Pearson correlation
        of each layer's map with the negative anchor (first layer, insensitive heads) and the positive anchor
        (mid layer, sensitive heads) — the CLVA drift analysis."""
        sens, insens = self.head_sets()
        maps = self.mean_map()
        neg = self.mean_map(insens)[self.neg_layer]
        pos = self.mean_map(sens)[self.mid_layer]
        return {"entropy": C.entropy(maps).tolist(), "visual_mass": maps.sum(-1).tolist(),
                "corr_negative_anchor": [pearson(m, neg) for m in maps],
                "corr_positive_anchor": [pearson(m, pos) for m in maps]}


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two flat vectors (0 when either is constant)."""
    a, b = a.flatten().double() - a.double().mean(), b.flatten().double() - b.double().mean()
    den = (a.norm() * b.norm()).item()
    return float((a @ b).item() / den) if den > 0 else 0.0


def analyse(session, images, questions, plugins=(), overrides=None, lambda_vis: float = 1.0,
            with_diagnostics: bool = True) -> tuple[list[LayerAnalysis], list[dict]]:
    """One prefill per batch with every layer probed (after the stack's edits) -> one analysis per row, and the
    stack's per-row diagnostics."""
    probe = LayerProbe()
    run = session.start(list(plugins) + [probe], overrides or {})
    outs = run.generate(images, questions, max_new_tokens=1)
    info = session.info
    results = []
    for b in range(len(images)):
        phi = torch.stack([probe.phi[i][b] for i in range(info.num_layers)]).cpu()
        own = probe.visual.image_slots(b, 0)  # the row's (first) image, without padded slots
        maps = torch.stack([probe.last_map[i][b, :, own] for i in range(info.num_layers)]).cpu()
        grid = probe.visual.grid(b, 0)
        results.append(LayerAnalysis(phi, maps, grid, lambda_vis, mid_layer=max(0, info.num_layers // 2 - 3)))
    return results, [o.diagnostics for o in outs]


def average(analyses: list[LayerAnalysis]) -> LayerAnalysis:
    """Mean over samples (same model, same visual token count)."""
    first = analyses[0]
    shapes = {tuple(a.last_map.shape) for a in analyses}
    if len(shapes) > 1:
        raise ValueError(f"cannot average maps over images with different visual-token grids ({sorted(shapes)}); "
                         f"inspect images of one size (Qwen gives every image size its own grid) or one at a time")
    return LayerAnalysis(torch.stack([a.phi for a in analyses]).mean(0),
                         torch.stack([a.last_map for a in analyses]).mean(0), first.grid, first.lambda_vis,
                         first.mid_layer, first.neg_layer)


class MaskVisualAtLayer:
    """Internal method for layer-masking analysis: text rows cannot see visual tokens at ``layer`` (Song et al.'s
    single-layer knock-out, prefill and decode)."""

    name = "hallufix-layer-mask"

    def __init__(self, layer: int):
        self.layer = layer

    @hookimpl
    def hallufix_configure(self, model):
        return P.attn_bias([self.layer])

    @hookimpl
    def hallufix_attn_bias(self, event):
        event.add(torch.where(event.visual_keys, float("-inf"), 0.0))


def suggest_layers(accuracy: list[float], baseline: float, num_layers: int) -> dict:
    """Fusion layers = shallow layers (first 60%) whose knock-out costs the most accuracy (drop >= half of the
    largest shallow drop); review layer = the deep layer (last 40%) with the largest drop, if it costs anything."""
    drops = [baseline - a for a in accuracy]
    split = int(round(num_layers * 0.6))
    shallow = drops[:split]
    top = max(shallow) if shallow else 0.0
    fusion = [i for i, d in enumerate(shallow) if top > 0 and d >= top / 2]
    deep = list(range(split, num_layers))
    review = max(deep, key=lambda i: drops[i]) if deep else None
    if review is not None and drops[review] <= 0:
        review = None
    return {"fusion_layers": fusion, "review_layer": review, "drops": drops}
