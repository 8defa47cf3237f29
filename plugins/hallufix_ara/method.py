"""ARA: attention re-alignment by intermediate-layer-guided input masking (Chen, Wang, Qin et al., Scientific
Reports 16, 14576, 2026) — a RECONSTRUCTION from the paper's lay summary (see docs/methods/ara.md for every choice).

Pass 1 (an analysis prefill on the original image, through ``ImageEvent.capture``): per candidate layer, the last
prompt row's attention over the visual tokens per head and the visual tokens' hidden norms -> sinks, image-centric
heads, layer maps, layer scores, top-K fusion -> a soft mask on the image (coverage, dilation, feathering) ->
dimming with a floor, unless the guard fires. Pass 2: ordinary generation on the masked image (fresh cache, fused
attention), or on [original, masked] (``mode: both``). ``mode: logit-bias`` is a different, single-pass method:
the token-level mask becomes a log(delta + (1 - delta) B) bias on the visual keys in the layers after the band.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import hallufix
from hallufix.method import Method
from hallufix import capture as C
from hallufix import points
from hallufix.config import parse_layers
from hallufix_ara.analysis import coverage_mask, fuse, layer_maps, pixel_mask, sink_tokens


@dataclass
class Config:
    band: str = "auto"              # candidate layers; auto = layers [floor(L/4), ceil(3L/4)] counted from band_base
    band_base: int = 1              # 1: the auto band's layers are 1-based (indices floor(L/4)-1 .. ceil(3L/4)-1,
                                    # 7-23 of 32); 0: the same formula read as 0-based indices (8-24 of 32)
    sink_ratio: float = 5.0         # kappa_s: sink = hidden norm > ratio x median
    head_ratio: float = 0.6         # rho_ic: min non-sink share of a head's visual attention
    generic_test: bool = True       # also require the head's map to differ (JS above the layer median) from a
    generic_prompt: str = "describe the image ."  # generic-prompt pass (cached per image)
    top_k: int = 3
    temperature: float = 1.0
    coverage: float = 0.6           # kappa: smallest cell set holding this share of the fused mass
    dilation: int = 1               # cells
    feather: float = 0.5            # Gaussian sigma in cells
    upsample: str = "bilinear"      # cell mask -> pixels: bilinear (between cell centres) | nearest (the cell's value)
    dim_floor: float = 0.3          # delta: I' = I * (delta + (1 - delta) B); 1 = no dimming (no-op)
    guard_min_sharpness: float = 0.05  # leave the image alone if the best selected layer is less sharp than this
    guard_max_area: float = 0.8     # ... or if the kept area exceeds this fraction of the image
    mode: str = "replace"           # replace | both (original + masked) | logit-bias (single pass, approximation)
    save_masks: str = ""            # a folder: write each mask as PNG

    def validate(self):
        if self.mode not in ("replace", "both", "logit-bias"):
            raise ValueError(f"mode must be replace, both or logit-bias, got {self.mode!r}")
        if not 0 <= self.dim_floor <= 1 or not 0 < self.coverage <= 1:
            raise ValueError("dim_floor must be in [0, 1] and coverage in (0, 1]")
        if self.band_base not in (0, 1):
            raise ValueError(f"band_base must be 0 or 1, got {self.band_base!r}")
        if self.upsample not in ("bilinear", "nearest"):
            raise ValueError(f"upsample must be bilinear or nearest, got {self.upsample!r}")


def resolve_band(cfg: Config, L: int) -> list[int]:
    if str(cfg.band) == "auto":  # the notes' [floor(L/4), ceil(3L/4)], in layers counted from band_base
        shift = cfg.band_base
        return list(range(max(0, L // 4 - shift), min(L - 1, math.ceil(3 * L / 4) - shift) + 1))
    return parse_layers(cfg.band, L)


def _js(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / max(p.sum(), 1e-12), q / max(q.sum(), 1e-12)
    m = (p + q) / 2
    kl = lambda a, b: float((a[a > 0] * np.log(a[a > 0] / np.maximum(b[a > 0], 1e-12))).sum())  # noqa: E731
    return (kl(p, m) + kl(q, m)) / 2


class ARA(Method):
    name = "ara"
    Config = Config

    def __init__(self, config: Config):
        super().__init__(config)
        self._generic_cache: dict = {}  # generic-prompt maps per image (the optional stricter head test)

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        c = self.config
        caps = model.capabilities
        self.band = resolve_band(c, model.num_layers)
        # no spatial grid of its own: the token map goes onto the vision encoder's patch grid
        self.via_patches = not caps.spatial_grid and caps.token_to_patch
        if c.dim_floor == 1:
            return []
        if c.mode == "both" and not caps.multi_image:
            raise ValueError(f"ara mode=both feeds two images; {model.display_name} takes one (use mode=replace)")
        if c.mode != "logit-bias" and not (caps.spatial_grid or caps.token_to_patch):
            raise ValueError(f"ara mode={c.mode} places a map on the image; {model.display_name}'s visual tokens have "
                             f"no spatial grid and no token-to-patch map (use mode=logit-bias)")
        if c.mode == "logit-bias":
            after = list(range(self.band[-1] + 1, model.num_layers))
            if not after:
                raise ValueError("ara mode=logit-bias needs layers after the band")
            return (points.attn_probs(self.band, rows="last", phases={"prefill"})
                    + points.layer_input(self.band, phases={"prefill"}) + points.attn_bias(after))
        return points.input_image()

    @hallufix.hookimpl
    def hallufix_batch_start(self, batch):
        self.diag: list[dict] = [{} for _ in range(batch.batch_size)]  # filled by the image hook or the probes
        self._lb = {"a": {}, "norms": {}, "bias": None}

    # ------------------------------------------------------------------ analysis (shared by both modes)
    def _analyse(self, a: dict, norms: dict, grid, keep_heads=None):
        c = self.config
        lm = layer_maps(a, norms, c.sink_ratio, c.head_ratio, keep_heads)
        scores, selected, fused = fuse(lm, c.top_k, c.temperature)
        return lm, scores, selected, fused

    def _generic_heads(self, event, b, a_b, n_b=None):
        """Heads whose non-sink map under the question differs from the generic-prompt map more than the layer's
        median JS divergence (one extra prefill per image, cached). ``n_b``: the visual tokens' hidden norms per
        layer; their sinks (the same under both prompts: the image precedes the text) are zeroed in both maps. A
        question that is the generic prompt has no question-relevant heads (its maps equal the generic ones up to
        rounding, which must not pick heads): none are kept, so the guard leaves the image alone."""
        if event.questions[b].strip() == self.config.generic_prompt.strip():
            return {l: [] for l in self.band}
        # the whole image keys the cache (a prefix of the bytes is shared by images with the same top rows)
        key = hashlib.sha1(event.images[b].tobytes()).hexdigest() + str(event.images[b].size)
        if key not in self._generic_cache:
            cap = event.capture([event.images[b]], [self.config.generic_prompt], layers=self.band)
            own = cap.visual.image_slots(0, 0)
            self._generic_cache[key] = {l: cap.last_visual[l][0, :, own].cpu().numpy() for l in self.band}
        gen = self._generic_cache[key]
        keep = {}
        for l in self.band:
            keep_tok = (~sink_tokens(n_b[l], self.config.sink_ratio) if n_b is not None
                        else np.ones(a_b[l].shape[1], dtype=bool))
            js = np.array([_js(a_b[l][h] * keep_tok, gen[l][h] * keep_tok) for h in range(a_b[l].shape[0])])
            keep[l] = [h for h in range(len(js)) if js[h] > np.median(js)]
        return keep

    # ------------------------------------------------------------------ pass 1 + image edit (two-pass modes)
    @hallufix.hookimpl
    def hallufix_input_image(self, event):
        c = self.config
        cap = event.capture(event.images, event.questions, layers=self.band, hidden_norms=True,
                            token_to_patch=self.via_patches)
        vt = cap.visual  # per-row token counts and grids (Qwen: every image its own)
        # the analysis is host work (NumPy): one explicit copy of each captured tensor
        a_host = {l: cap.last_visual[l].cpu() for l in self.band}
        n_host = {l: cap.hidden_norms[l].cpu() for l in self.band}
        to_patch = cap.token_to_patch.cpu() if self.via_patches else None
        for b, image in enumerate(event.images):
            own = vt.image_slots(b, 0)  # this row's own visual tokens (no padded slot)
            a_b = {l: a_host[l][b, :, own].numpy() for l in self.band}
            n_b = {l: n_host[l][b, own].numpy() for l in self.band}
            keep = self._generic_heads(event, b, a_b, n_b) if c.generic_test else None
            lm, scores, selected, fused = self._analyse(a_b, n_b, None, keep)
            d = {"selected_layers": selected, "scores": {str(k): round(v, 6) for k, v in scores.items()},
                 "image_centric_heads": {str(l): h for l, h in lm.heads.items()}}
            if fused is None:
                d.update(guard="no image-centric heads", coverage=1.0)
                self.diag[b] = d
                continue
            if self.via_patches:  # token map -> patch map (InstructBLIP: through the Q-Former cross-attention)
                fused = fused @ to_patch[b].numpy()
                fused = fused / max(fused.sum(), 1e-12)
                grid = tuple(cap.patch_grid)
            else:
                grid = vt.grid(b, 0)
            cells = coverage_mask(fused, grid, c.coverage, c.dilation)
            index = event.cell_index(image, grid)
            visible = index >= 0
            area = float(cells.reshape(-1)[index[visible]].mean()) if visible.any() else 1.0
            best = max(lm.sharpness[l] for l in selected)
            d.update(coverage=round(area, 6), fused_map=[round(float(x), 8) for x in fused],
                     grid=list(grid), best_sharpness=round(best, 6))
            if best < c.guard_min_sharpness:
                d["guard"] = "attention not confident"
            elif area > c.guard_max_area:
                d["guard"] = "mask covers almost everything"
            else:
                d["guard"] = None
                B = pixel_mask(cells, index, c.feather, c.upsample)
                arr = np.asarray(image.convert("RGB"), dtype=np.float64)
                dimmed = arr * (c.dim_floor + (1 - c.dim_floor) * B)[..., None]
                masked = Image.fromarray(np.clip(np.rint(dimmed), 0, 255).astype(np.uint8))
                if c.save_masks:
                    folder = Path(c.save_masks)
                    folder.mkdir(parents=True, exist_ok=True)
                    Image.fromarray((B * 255).astype(np.uint8)).save(folder / f"mask_{len(list(folder.iterdir()))}.png")
                if c.mode == "both":
                    event.extra_images[b].append(masked)
                else:
                    event.images[b] = masked
            self.diag[b] = d

    # ------------------------------------------------------------------ single-pass logit-bias approximation
    @hallufix.hookimpl
    def hallufix_layer_input(self, event):
        norms = event.hidden.float().norm(dim=-1)  # (B, q = P): prefill rows are prompt positions
        self._lb["norms"][event.layer] = C.gather_visual(norms, event.visual)  # (B, n_max)

    @hallufix.hookimpl
    def hallufix_attn_probs(self, event):
        self._lb["a"][event.layer] = C.gather_visual(event.last(), event.visual)  # (B, H, n_max) float32
        if event.layer != self.band[-1]:
            return
        vt = event.visual
        # the analysis is host work (NumPy): one explicit copy per band layer, then per row and image
        a_host = {l: self._lb["a"][l].cpu() for l in self.band}
        n_host = {l: self._lb["norms"][l].cpu() for l in self.band}
        bias = np.zeros((vt.batch_size, vt.n_max))
        for b in range(vt.batch_size):
            # each image of a row (a method may have added one) is analysed on its own tokens and grid
            per_image = []
            for k in range(vt.images(b)):
                own = vt.image_slots(b, k)
                d = self._bias_of_image(bias[b, own], {l: a_host[l][b, :, own].numpy() for l in self.band},
                                        {l: n_host[l][b, own].numpy() for l in self.band},
                                        vt.grid(b, k) or (1, own.stop - own.start))
                per_image.append(d)
            if per_image and per_image[0] is not None:
                self.diag[b] = dict(per_image[0])
                if len(per_image) > 1:
                    self.diag[b]["per_image"] = per_image
        # handed back on the model's device (padded slots 0: never scattered)
        self._lb["bias"] = torch.as_tensor(bias, dtype=torch.float32, device=event.device)

    def _bias_of_image(self, out: np.ndarray, a: dict, norms: dict, grid) -> dict | None:
        """Write one image's token bias ``log(delta + (1 - delta) B)`` into ``out`` (its slots); its diagnostics."""
        c = self.config
        lm, scores, selected, fused = self._analyse(a, norms, None)
        if fused is None:
            return None
        cells = coverage_mask(fused, grid, c.coverage, c.dilation).reshape(-1)
        out[:] = np.log(c.dim_floor + (1 - c.dim_floor) * cells) if c.dim_floor > 0 else \
            np.where(cells > 0, 0.0, -np.inf)
        return {"selected_layers": selected, "scores": {str(k): round(v, 6) for k, v in scores.items()},
                "coverage": round(float(cells.mean()), 6), "guard": None}

    @hallufix.hookimpl
    def hallufix_attn_bias(self, event):
        event.add(C.scatter_visual(self._lb["bias"], event.visual, event.kv_len, fill=0.0))

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        return [d or None for d in self.diag]
