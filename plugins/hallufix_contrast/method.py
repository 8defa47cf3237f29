"""Contrastive attention (Song, Li, Yu, arXiv 2601.08151, CVPR 2026): review-layer masking (v1, single pass) or
a contrast-selected crop fed as a second image (CVPR version, two passes).

1. At every fusion-candidate layer and at the post-integration layer: the last prompt row's attention over the
   visual tokens, averaged over heads and renormalised over the visual tokens.
2. Pre-integration layer i* = the candidate with the largest Hellinger distance to the post layer (per sample).
3. Contrast c = |A_post - A_i*| (``signed``: A_post - A_i*).
4. ``review`` variant: the tokens below the rho-quantile of c are softly suppressed at the review layer, in one of
   three ``mode`` s: ``attn`` (their attention x lambda, renormalised = a log(lambda) logit bias on those keys for
   text rows; keeps SDPA; acts at every step), ``kv`` (their keys and values x lambda at the review layer, every
   step), ``residual`` (their hidden states x lambda at the review layer's input, prefill; persists through the
   cache). ``crop`` variant: the positive part of the signed contrast selects a region, cropped from the full image
   and fed as a second image with the original.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

import hallufix
from hallufix.method import Method
from hallufix import capture as C
from hallufix import points
from hallufix.config import parse_layers

PAPER_FUSION = (2, 4, 8, 11, 12, 13)  # 1-based, LLaVA-1.5 (32 layers)
PAPER_POST, PAPER_REVIEW, PAPER_DEPTH = 28, 29, 32


@dataclass
class Config:
    variant: str = "review"          # review (v1, single pass) | crop (CVPR, two passes)
    mode: str = "attn"               # review variant: attn | kv | residual
    fusion_layers: str = "auto"      # 0-based list/range, or auto (the paper's layers scaled to the model depth)
    post_layer: str = "auto"         # 0-based, or auto (paper 28 -> 27 of 32, scaled)
    review_layer: str = "auto"       # 0-based, or auto (paper 29 -> 28 of 32, scaled)
    quantile: float = 0.2            # rho: fraction of visual tokens suppressed
    scale: float = 0.1               # lambda (0.1: a third-party port's value; the paper's is not public)
    signed: bool = False             # contrast A_post - A_pre instead of |A_post - A_pre| (review variant)
    rows: str = "text"               # attn mode: query rows biased at the review layer: text | all
    crop_quantile: float = 0.8       # crop: cells at or above this quantile of the positive contrast
    crop_margin: float = 0.1         # crop: margin added on each side, as a fraction of the box
    crop_min_side: float = 0.3333    # crop: minimum side as a fraction of the image side

    def validate(self):
        if self.variant not in ("review", "crop"):
            raise ValueError(f"variant must be review or crop, got {self.variant!r}")
        if self.mode not in ("attn", "kv", "residual"):
            raise ValueError(f"mode must be attn, kv or residual, got {self.mode!r}")
        if not 0 <= self.quantile < 1 or self.scale < 0:
            raise ValueError("quantile must be in [0, 1) and scale >= 0")
        if self.rows not in ("text", "all"):
            raise ValueError(f"rows must be text or all, got {self.rows!r}")


def scale_layer(paper_layer: int, L: int) -> int:
    """A paper layer (1-based, of the 32-layer LLaVA-1.5) as a 0-based index of an ``L``-layer model:
    ``(paper_layer - 1) * L / 32`` rounded half up (Python's ``round`` rounds halves to even and maps the paper's
    layers 12 and 13 both to index 10 on 28 layers; half-up gives the Qwen presets' 1, 3, 6, 9, 10, 11)."""
    return math.floor((paper_layer - 1) * L / PAPER_DEPTH + 0.5)


def resolve_layers(cfg: Config, L: int) -> tuple[list[int], int, int]:
    """``(fusion layers, post layer, review layer)``, 0-based; ``auto`` scales the paper's LLaVA layers by L/32.

    The paper's review layer (29) has three layers after it; a model too shallow for the scaled layers to leave
    one keeps the review layer below the last layer (``auto``: at most ``L - 2``, the post layer below it), since
    at the last layer the ``residual`` mode has no later layer to act through and the others act on the answer's
    last attention only."""
    review_auto = str(cfg.review_layer) == "auto"
    if str(cfg.post_layer) != "auto":
        post = int(cfg.post_layer)
    else:
        cap = L - 3 if review_auto else int(cfg.review_layer) - 1
        post = min(cap, scale_layer(PAPER_POST, L))
    review = int(cfg.review_layer) if not review_auto else min(L - 2, max(post + 1, scale_layer(PAPER_REVIEW, L)))
    if str(cfg.fusion_layers) == "auto":
        fusion = sorted({min(post - 1, scale_layer(f, L)) for f in PAPER_FUSION})
    else:
        fusion = parse_layers(cfg.fusion_layers, L)
    if not fusion or max(fusion) >= post or post >= review or review >= L:
        raise ValueError(f"need fusion layers < post layer < review layer < {L}; got {fusion}, {post}, {review}")
    return fusion, post, review


def normalised_maps(last_rows: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """``{layer: (B, H, n_max)}`` last-row attention over visual tokens (padded slots 0) -> head-averaged,
    renormalised ``(B, n_max)`` (padded slots stay 0)."""
    return {l: C.normalise(C.head_average(m.float())) for l, m in last_rows.items()}


def contrast_map(maps: dict[int, torch.Tensor], fusion: list[int], post: int, signed: bool):
    """``(contrast (B, n_max), chosen layer per row (B,), Hellinger distances (B, len(fusion)))``, all on the
    maps' device; padded slots (0 in every map) give contrast 0."""
    dist = torch.stack([C.hellinger(maps[f], maps[post]) for f in fusion], -1)  # (B, F)
    choice = dist.argmax(-1)  # (B,)
    stacked = torch.stack([maps[f] for f in fusion], 1)  # (B, F, n_max)
    pre = stacked.gather(1, choice[:, None, None].expand(-1, 1, stacked.shape[-1])).squeeze(1)
    diff = maps[post] - pre
    chosen = torch.as_tensor(fusion, device=choice.device)[choice]
    return (diff if signed else diff.abs()), chosen, dist


def _positive_quantile(values: np.ndarray, quantile: float) -> tuple[np.ndarray, float]:
    """``(v, thr)``: the positive part of ``values`` (float64) and its ``quantile``, what the crop selects on."""
    v = np.maximum(np.asarray(values, dtype=np.float64), 0)
    return v, float(np.quantile(v, quantile))


def crop_decision_gap(values: np.ndarray, quantile: float) -> float | None:
    """How close :func:`crop_box`'s cell selection is to a tie: the smallest ``|v - thr| / thr`` over the cells
    with a positive value (``thr`` the ``quantile`` of the positive part); where ``thr`` is 0 the selection is
    "positive", and the gap is the smallest positive value over the largest. ``None`` when no cell is positive
    (the crop is then the whole image: no selection). Below the model dtype's relative resolution the selection is
    decided by rounding (half precision: batched and single runs may crop differently)."""
    v, thr = _positive_quantile(values, quantile)
    pos = v[v > 0]
    if not pos.size:
        return None
    if thr <= 0:
        return float(pos.min() / pos.max())
    return float(np.min(np.abs(pos - thr)) / thr)


def _rounded(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def crop_box(values: np.ndarray, grid: tuple[int, int], quantile: float) -> tuple[int, int, int, int]:
    """Cells ``(r0, c0, r1, c1)`` (half-open) bounding the largest 4-connected component of cells whose value is at
    or above the ``quantile`` of the positive part of ``values`` (raster order on ``grid``)."""
    v, thr = _positive_quantile(values, quantile)
    v = v.reshape(grid)
    on = (v >= thr) & (v > 0)
    if not on.any():
        return 0, 0, grid[0], grid[1]
    seen, best = np.zeros_like(on), []
    for r in range(grid[0]):
        for c in range(grid[1]):
            if on[r, c] and not seen[r, c]:
                comp, stack = [], [(r, c)]
                seen[r, c] = True
                while stack:
                    y, x = stack.pop()
                    comp.append((y, x))
                    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < grid[0] and 0 <= xx < grid[1] and on[yy, xx] and not seen[yy, xx]:
                            seen[yy, xx] = True
                            stack.append((yy, xx))
                if (len(comp), sum(v[p] for p in comp)) > (len(best), sum(v[p] for p in best)):
                    best = comp
    ys, xs = [p[0] for p in best], [p[1] for p in best]
    return min(ys), min(xs), max(ys) + 1, max(xs) + 1


def pixel_box(cell_index: np.ndarray, cells: tuple[int, int, int, int], grid, margin: float, min_side: float):
    """The original-image pixel box covering ``cells``, widened by ``margin`` and to ``min_side`` of the image."""
    r0, c0, r1, c1 = cells
    rows, cols = cell_index // grid[1], cell_index % grid[1]
    inside = (cell_index >= 0) & (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    H, W = cell_index.shape
    if not inside.any():
        return 0, 0, W, H
    ys, xs = np.nonzero(inside)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    x0, x1, y0, y1 = x0 - mx, x1 + mx, y0 - my, y1 + my
    w_min, h_min = min_side * W, min_side * H
    if x1 - x0 < w_min:
        cx = (x0 + x1) / 2
        x0, x1 = cx - w_min / 2, cx + w_min / 2
    if y1 - y0 < h_min:
        cy = (y0 + y1) / 2
        y0, y1 = cy - h_min / 2, cy + h_min / 2
    dx = max(0 - x0, 0) - max(x1 - W, 0)
    dy = max(0 - y0, 0) - max(y1 - H, 0)
    x0, x1, y0, y1 = x0 + dx, x1 + dx, y0 + dy, y1 + dy
    return int(max(0, math.floor(x0))), int(max(0, math.floor(y0))), int(min(W, math.ceil(x1))), \
        int(min(H, math.ceil(y1)))


class Contrast(Method):
    name = "contrast"
    Config = Config

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        c = self.config
        self.fusion, self.post, self.review = resolve_layers(c, model.num_layers)
        if c.variant == "crop":
            if not model.capabilities.spatial_grid:
                raise ValueError(f"contrast variant=crop needs a spatial token grid; {model.display_name}'s visual "
                                 f"tokens have none (use variant=review)")
            if not model.capabilities.multi_image:
                raise ValueError(f"contrast variant=crop feeds the crop as a second image; {model.display_name} takes "
                                 f"one (use variant=review)")
            return points.input_image()
        if c.scale == 1 or c.quantile == 0:
            return []
        probes = points.attn_probs(self.fusion + [self.post], rows="last", phases={"prefill"})
        if c.mode == "attn":
            return probes + points.attn_bias([self.review])
        if c.mode == "kv":
            return probes + points.attn_kv([self.review])
        return probes + points.layer_input([self.review], phases={"prefill"})

    @hallufix.hookimpl
    def hallufix_batch_start(self, batch):
        self.maps: dict[int, torch.Tensor] = {}
        self.masked: torch.Tensor | None = None
        self.diag: list[dict] = [{} for _ in range(batch.batch_size)]  # review variant: filled by the probes
        self.diag_crop: dict[int, dict] = {}  # crop variant: filled by the image hook

    # ------------------------------------------------------------------ review variant
    @hallufix.hookimpl
    def hallufix_attn_probs(self, event):
        vt = event.visual
        self.maps[event.layer] = C.normalise(C.head_average(C.gather_visual(event.last(), vt)))  # (B, n_max)
        if event.layer != self.post:
            return
        contrast, chosen, dist = contrast_map(self.maps, self.fusion, self.post, self.config.signed)
        # below the rho-quantile of each row's own visual tokens (padded slots never suppressed)
        self.masked = C.quantile_mask(contrast, self.config.quantile, vt)  # (B, n_max)
        chosen, dist, counts = chosen.tolist(), dist.cpu(), self.masked.sum(-1).tolist()  # one host read each
        for b, d in enumerate(self.diag):
            d.update({"pre_layer": int(chosen[b]), "post_layer": self.post, "review_layer": self.review,
                      "hellinger": {str(f): round(float(dist[b, k]), 6) for k, f in enumerate(self.fusion)},
                      "suppressed_tokens": int(counts[b])})

    def _key_mask(self, event) -> torch.Tensor:
        """``(B, kv)`` bool: the suppressed visual keys of this forward."""
        return C.scatter_visual(self.masked.to(torch.float32), event.visual, event.kv_len, fill=0.0) > 0

    @hallufix.hookimpl
    def hallufix_attn_bias(self, event):
        keys = self._key_mask(event)
        rows = torch.ones_like(event.text_rows) if self.config.rows == "all" else None  # None: the text rows
        event.add(torch.where(keys, math.log(self.config.scale) if self.config.scale > 0 else float("-inf"), 0.0),
                  rows)

    @hallufix.hookimpl
    def hallufix_attn_kv(self, event):
        keys = self._key_mask(event)[:, None, :, None]  # (B, 1, kv, 1)
        lam = self.config.scale
        event.key = torch.where(keys, event.key * lam, event.key)
        event.value = torch.where(keys, event.value * lam, event.value)

    @hallufix.hookimpl
    def hallufix_layer_input(self, event):
        rows = self._key_mask(event)[:, event.positions]  # (B, q): masked visual rows
        event.hidden = torch.where(rows[..., None], event.hidden * self.config.scale, event.hidden)

    # ------------------------------------------------------------------ crop variant
    @hallufix.hookimpl
    def hallufix_input_image(self, event):
        c = self.config
        cap = event.capture(event.images, event.questions, layers=self.fusion + [self.post])
        maps = normalised_maps(cap.last_visual)
        contrast, chosen, dist = contrast_map(maps, self.fusion, self.post, signed=True)
        # the box search is host work: one explicit copy of the batch's contrast
        contrast, chosen, dist, vt = contrast.cpu(), chosen.tolist(), dist.cpu(), cap.visual
        for b, image in enumerate(event.images):
            grid = vt.grid(b, 0)  # the row's own grid (Qwen: per image), its own slots
            values = contrast[b, vt.image_slots(b, 0)].numpy()
            cells = crop_box(values, grid, c.crop_quantile)
            box = pixel_box(event.cell_index(image, grid), cells, grid, c.crop_margin, c.crop_min_side)
            event.extra_images[b].append(image.crop(box))
            self.diag_crop[b] = {"pre_layer": int(chosen[b]), "post_layer": self.post, "cells": list(cells),
                                 "box": list(box), "cells_gap": _rounded(crop_decision_gap(values, c.crop_quantile)),
                                 "hellinger": {str(f): round(float(dist[b, k]), 6) for k, f in enumerate(self.fusion)}}

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        if self.config.variant == "crop":
            return [self.diag_crop.get(b) for b in range(batch.batch_size)]
        return [d or None for d in self.diag]
