"""CLVA's Q-Former placement (``placement=qformer``; the paper's App. B.1, Eq. 14), for models whose capabilities
declare ``qformer`` (InstructBLIP).

The paper re-weights the Q-Former cross-attention (the query tokens over the image features) with the factor of
Eq. 10-11 instead of the language model's attention over the compressed query tokens, and leaves open how the
anchors are defined over the raw patches. hallufix (two passes, the reconstruction's variant (b)):

1. Pass 1, an analysis prefill of the unmodified model (``ImageEvent.capture``): at ``neg_layer`` / ``pos_layer``
   of the language model, Phi (Eq. 1, over the prompt's text rows), the head classes (Eq. 2-3) and the last prompt
   row's maps over the query tokens (Eq. 4), exactly as the language-model placement computes them at prefill.
2. Each map is carried onto the vision encoder's patches through the head- and layer-averaged Q-Former
   cross-attention (``M_patch = M_query @ A_QF``, CLS column dropped: ``capture.token_to_patch``), then Eq. 8-9
   (with every estimator switch of the language-model placement) marks the anchor patches.
3. Pass 2, the generation: every declared Q-Former cross-attention layer gets the logit bias
   ``log(max(0, 1 + alpha*Zpos - beta*Zneg))`` on the patch features (Eq. 14 in logit space; the CLS feature keeps
   factor 1), through the core hook ``qformer_bias.{i}``. The language model is untouched.

The Q-Former runs once, before the language model, so the anchors are the prompt's (``anchors`` does not apply).
"""
from __future__ import annotations

import math

import torch

from hallufix import capture as C
from hallufix import points as P
from hallufix.config import parse_layers
from hallufix_clva.method import anchor_mask


def head_classes(phi: torch.Tensor, cfg, kind: str) -> torch.Tensor:
    """Eq. 2-3 on ``phi (B, H)``: sensitive (``kind="pos"``: Phi > mu + lambda*sd) or insensitive (``"neg"``:
    Phi < mu - lambda*sd) heads ``(B, H)`` bool, sd population or sample (``phi_std``); an empty set falls back to
    the top (bottom) head by Phi under ``empty_heads=top1``."""
    sd, mu = torch.std_mean(phi, 1, correction=int(cfg.phi_std == "sample"), keepdim=True)
    heads = phi > mu + cfg.lambda_vis * sd if kind == "pos" else phi < mu - cfg.lambda_vis * sd
    empty = ~heads.any(1)
    if bool(empty.any()) and cfg.empty_heads == "top1":
        pick = phi.argmax(1) if kind == "pos" else phi.argmin(1)
        fallback = torch.zeros_like(heads).scatter_(1, pick[:, None], True)
        heads = torch.where(empty[:, None], fallback, heads)
    return heads


def log_factor(zpos: torch.Tensor, zneg: torch.Tensor, cfg) -> torch.Tensor | None:
    """``log(max(0, 1 + a*Zpos - b*Zneg))`` ``(B, n)`` float32 (``-inf`` where the factor is 0) with the signs of
    ``use_pos`` / ``use_neg`` / ``reverse``, or ``None`` when no entry is re-weighted."""
    a, b = (-cfg.alpha, -cfg.beta) if cfg.reverse else (cfg.alpha, cfg.beta)
    a, b = (a if cfg.use_pos else 0.0), (b if cfg.use_neg else 0.0)
    active = (zpos if a else torch.zeros_like(zpos)) | (zneg if b else torch.zeros_like(zneg))
    if not bool(active.any()):
        return None
    log_of = lambda w: math.log(w) if w > 0 else -math.inf  # noqa: E731
    return torch.where(zpos, torch.where(zneg, log_of(1 + a - b), log_of(1 + a)),
                       torch.where(zneg, log_of(1 - b), 0.0)).float()


def qformer_layers(cfg, model) -> list[int]:
    """The Q-Former cross-attention layers to re-weight: ``auto`` = every one (``model.qformer_layers``)."""
    have = list(model.qformer_layers)
    if str(cfg.qformer_layers) == "auto":
        return have
    try:
        chosen = parse_layers(cfg.qformer_layers, max(have) + 1)
    except ValueError as exc:
        raise ValueError(f"clva.qformer_layers={cfg.qformer_layers!r}: {exc}; this model's Q-Former "
                         f"cross-attention layers are {have}") from exc
    wrong = [i for i in chosen if i not in have]
    if wrong:
        raise ValueError(f"clva.qformer_layers: Q-Former layers {wrong} have no cross-attention; this model's "
                         f"cross-attention layers are {have}")
    return chosen


class QFormerPlacement:
    """The per-run state of ``placement=qformer`` (owned by the CLVA plugin object, which dispatches to it).

    :param cfg: the CLVA config; ``neg`` / ``pos``: the resolved anchor layers of the language model."""

    def __init__(self, cfg, model, neg: int, pos: int):
        if not model.capabilities.qformer:
            raise ValueError(f"clva.placement=qformer re-weights a Q-Former's cross-attention, but "
                             f"{model.display_name} has none (its capabilities do not declare qformer); use "
                             f"placement=lm")
        self.cfg, self.neg, self.pos = cfg, neg, pos
        self.layers = qformer_layers(cfg, model)
        self.bias: torch.Tensor | None = None  # (B, rows*cols) log factors over the patches, or None
        self.z = self.maps = self.heads = None

    def points(self) -> list:
        return P.input_image() + P.qformer_bias(self.layers)

    def on_image(self, event) -> None:
        """Pass 1 (see the module docstring): anchors over the patches, per batch row."""
        cfg = self.cfg
        cap = event.capture(event.images, event.questions, layers=sorted({self.neg, self.pos}), token_to_patch=True,
                            text_mass=True)
        to_patch = cap.token_to_patch  # (B, n_query, rows*cols) float32
        self.z, self.maps, self.heads = {}, {}, {}
        for kind, layer in (("pos", self.pos), ("neg", self.neg)):
            heads = head_classes(cap.text_mass[layer], cfg, kind)  # Eq. 1-3
            m_query = C.head_average(cap.last_visual[layer], heads)[:, : to_patch.shape[1]]  # Eq. 4: (B, n_query)
            m_patch = torch.bmm(m_query[:, None, :], to_patch)[:, 0]  # (B, rows*cols)
            # Eq. 8-9 over the patches (all valid: one image per prompt, a fixed grid)
            self.z[kind] = anchor_mask(m_patch, cfg, None) & heads.any(1, keepdim=True)
            self.maps[kind], self.heads[kind] = m_patch, heads
        self.bias = log_factor(self.z["pos"], self.z["neg"], cfg)

    def on_bias(self, event) -> None:
        """Pass 2: Eq. 14 as a logit bias on the patch features of a Q-Former cross-attention layer."""
        if self.bias is not None:
            event.add_patch_bias(self.bias)

    def diagnostics(self, batch, name: str) -> None:
        if self.z is None:
            return
        for r, diag in enumerate(batch.diagnostics):
            d = {"placement": "qformer", "layers": {"neg": self.neg, "pos": self.pos, "qformer": self.layers},
                 "prefill": {"sensitive_heads": int(self.heads["pos"][r].sum()),
                             "insensitive_heads": int(self.heads["neg"][r].sum()),
                             "positive_anchors": int(self.z["pos"][r].sum()),
                             "negative_anchors": int(self.z["neg"][r].sum())}}
            if self.cfg.record_maps:  # over the vision encoder's patches (raster order)
                d["positive_map"] = self.maps["pos"][r].tolist()
                d["negative_map"] = self.maps["neg"][r].tolist()
            diag[name] = d

