"""CLVA: cross-layer visual anchors (Yang, Yuan, Hu, Jiang, arXiv 2603.25088), single pass, on fused attention.

Per forward (prefill, then every decode step when ``anchors="dynamic"``):

1. Eq. 1: per-head visual intensity ``Phi`` = mean over text query rows of the visual attention mass, at the
   anchor layers (a running mean over every text row seen so far, which equals Eq. 1 computed without a cache).
2. Eq. 2-3: sensitive heads ``Phi > mu + lambda*sd``, insensitive ``Phi < mu - lambda*sd`` within a layer.
3. Eq. 4: anchor maps = the last query row's attention over the visual tokens, averaged over the sensitive heads
   of ``pos_layer`` (positive) and the insensitive heads of ``neg_layer`` (negative).
4. Eq. 8-9: z-score outlier masks ``Z = z > tau``.
5. Eq. 10-11, in the drift layers: text rows' attention to visual keys times ``1 + alpha*Zpos - beta*Zneg``, then
   renormalised — run as the exact logit bias ``log(max(0, 1 + alpha*Zpos - beta*Zneg))`` on those keys, so the
   drift layers stay on SDPA.

Only the anchor layers' probe rows are materialised (the text rows at prefill, one row per decode step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import hallufix
from hallufix.method import Method
from hallufix import capture as C
from hallufix import points
from hallufix.config import parse_layers


@dataclass
class Config:
    alpha: float = 14.0          # positive-anchor amplification (paper default)
    beta: float = 0.9            # negative-anchor suppression (paper default)
    tau: float = 2.0             # z-score threshold
    lambda_vis: float = 1.0      # head-split width: mean ± lambda·std within a layer
    neg_layer: int = 0           # 0-based; the paper's layer 1
    pos_layer: str = "auto"      # 0-based index or auto = L/2 - 3 (the paper's layer L/2 - 2)
    apply_layers: str = "auto"   # drift region; auto = every layer after pos_layer ("14:", "20-31", [..])
    anchors: str = "dynamic"     # dynamic: recomputed every forward (running-mean Phi); prefill: frozen
    use_pos: bool = True
    use_neg: bool = True
    reverse: bool = False        # both signs flipped (the paper's Table 4, last row)
    empty_heads: str = "top1"    # empty head set: top1 (top/bottom head by Phi) or skip (no anchor)
    eps: float = 1e-6            # z-score stabiliser
    eps_scale: str = "absolute"  # absolute (z = (M - mu)/(sd + eps)) | relative (eps x mu: a scale-free z)
    renormalise_map: bool = True  # rescale each anchor map M to sum 1 over the visual tokens before Eq. 8
    phi_std: str = "population"  # sigma of Eq. 2-3 over a layer's heads: population | sample
    map_std: str = "population"  # sigma of Eq. 8 over the visual tokens: population | sample
    record_maps: bool = False    # put the anchor maps into the diagnostics
    placement: str = "lm"        # lm: the language model's attention | qformer: the Q-Former's (App. B.1, qformer.py)
    qformer_layers: str = "auto"  # placement=qformer: Q-Former cross-attention layers; auto = every one

    def validate(self):
        if self.anchors not in ("dynamic", "prefill"):
            raise ValueError(f"anchors must be dynamic or prefill, got {self.anchors!r}")
        if self.empty_heads not in ("top1", "skip"):
            raise ValueError(f"empty_heads must be top1 or skip, got {self.empty_heads!r}")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError("alpha and beta must be >= 0")
        if self.placement not in ("lm", "qformer"):
            raise ValueError(f"placement must be lm or qformer, got {self.placement!r}")
        if self.eps_scale not in ("absolute", "relative"):
            raise ValueError(f"eps_scale must be absolute or relative, got {self.eps_scale!r}")
        for key in ("phi_std", "map_std"):
            if getattr(self, key) not in ("population", "sample"):
                raise ValueError(f"{key} must be population or sample, got {getattr(self, key)!r}")


def anchor_mask(m: torch.Tensor, cfg: Config, valid=None) -> torch.Tensor:
    """Eq. 8-9 on anchor maps ``m (B, n)`` or ``(B, ..., n)`` (float, any device): ``(M - mu) / (sd + eps) > tau`` over each row's
    ``valid`` visual tokens (a :class:`~hallufix.visual.VisualTokens`, a ``(B, n)`` bool mask, or ``None`` = all),
    with ``M`` optionally renormalised to sum 1 (``renormalise_map``), ``sd`` the population or sample estimator
    (``map_std``) and ``eps`` absolute or ``eps x mu`` (``eps_scale``). -> ``(B, n)`` bool, padded slots False."""
    if cfg.renormalise_map:
        m = C.normalise(m)  # padded slots are 0: the sum runs over the row's own tokens
    if cfg.eps_scale == "relative":
        eps = cfg.eps * C.masked_std_mean(m, valid)[1]
    else:
        eps = cfg.eps
    z = C.zscore_mask(m, cfg.tau, valid, eps=eps, unbiased=cfg.map_std == "sample")
    v = getattr(valid, "valid", valid)  # the (B, n) mask of a VisualTokens, or the mask itself
    if v is None:
        return z
    return z & v.view(v.shape[0], *([1] * (z.dim() - v.dim())), v.shape[-1])


def resolve_layers(cfg: Config, num_layers: int) -> tuple[int, int, list[int]]:
    """``(neg_layer, pos_layer, drift layers)`` for a model with ``num_layers`` layers (0-based)."""
    pos = max(0, num_layers // 2 - 3) if str(cfg.pos_layer) == "auto" else int(cfg.pos_layer)
    neg = int(cfg.neg_layer)
    for name, layer in (("pos_layer", pos), ("neg_layer", neg)):
        if not 0 <= layer < num_layers:
            raise ValueError(f"{name}={layer} is outside the model's {num_layers} layers (0-based)")
    if str(cfg.apply_layers) == "auto":
        drift = list(range(max(pos, neg) + 1, num_layers))
    else:
        drift = parse_layers(cfg.apply_layers, num_layers)
    early = [i for i in drift if i <= max(pos, neg)]
    if early:
        raise ValueError(f"drift layers {early} do not come after the anchor layers ({neg}, {pos}): anchors must be "
                         f"measured earlier in the same forward")
    return neg, pos, drift


class CLVA(Method):
    name = "clva"
    Config = Config
    qformer = None  # the QFormerPlacement state under placement=qformer (plugins/hallufix_clva/qformer.py)

    # ------------------------------------------------------------------ set-up
    @hallufix.hookimpl
    def hallufix_configure(self, model):
        c = self.config
        off = (c.alpha == 0 and c.beta == 0) or not (c.use_pos or c.use_neg) or \
              (not c.use_neg and c.alpha == 0) or (not c.use_pos and c.beta == 0)
        if off:
            return []
        self.neg, self.pos, self.drift = resolve_layers(c, model.num_layers)
        if c.placement == "qformer":  # App. B.1: re-weight the Q-Former's cross-attention instead
            from hallufix_clva.qformer import QFormerPlacement

            self.qformer = QFormerPlacement(c, model, self.neg, self.pos)
            return self.qformer.points()
        probe_phases = {"prefill", "decode"} if c.anchors == "dynamic" else {"prefill"}
        return (points.attn_probs(sorted({self.neg, self.pos}), rows="text", phases=probe_phases)
                + points.attn_bias(self.drift, per_forward=True))

    @hallufix.hookimpl
    def hallufix_batch_start(self, batch):
        self.phi_sum: dict[int, torch.Tensor] = {}
        self.phi_n: dict[int, torch.Tensor] = {}
        self.z = {"pos": None, "neg": None}
        self.maps = {"pos": None, "neg": None}
        self.heads = {}
        self.last: dict[int, torch.Tensor] = {}  # anchor layer -> (B, H, n_max) last row's visual map
        self.fresh = False  # probes ran since the anchors were last computed
        self.diag_prefill = None
        self._sign = self._is_pos = None  # (2, 1) constants on the model's device, made at the first anchors

    @hallufix.hookimpl
    def hallufix_input_image(self, event):
        self.qformer.on_image(event)  # declared only with placement=qformer

    @hallufix.hookimpl
    def hallufix_qformer_bias(self, event):
        self.qformer.on_bias(event)

    # ------------------------------------------------------------------ anchors (probe rows at 2 layers)
    @hallufix.hookimpl
    def hallufix_attn_probs(self, event):
        """Eq. 1's running sums and the last row's visual map at an anchor layer; the statistics of both anchors
        (Eq. 1-9) run together once per forward, in :meth:`_anchors`, before the first drift layer needs them."""
        layer, vt = event.layer, event.visual  # the batch's visual tokens: (B, n_max) slots, padded where rows differ
        if event.forward.q_len == 1:
            # a decode step: one row, the new token (a text row); its visual columns give both the mass and the map
            last = C.gather_visual(event.probs[:, :, 0], vt)  # (B, H, n_max) float32, padded slots 0
            s, n = last.sum(-1), 1  # (B, H)
        else:
            mass = C.visual_mass(event.probs, event.visual_keys)  # (B, H, R)
            text = event.row_mask("text").float()  # (B, R)
            s, n = (mass * text[:, None]).sum(-1), text.sum(-1)  # (B, H), (B,)
            last = C.gather_visual(event.last(), vt)  # (B, H, n_max)
        if layer in self.phi_sum:
            self.phi_sum[layer] = self.phi_sum[layer] + s
            self.phi_n[layer] = self.phi_n[layer] + n
        else:
            self.phi_sum[layer] = s
            self.phi_n[layer] = torch.full_like(s[:, 0], float(n)) if isinstance(n, int) else n
        self.last[layer] = last
        self.fresh = True

    def _anchors(self, visual, phase: str) -> None:
        """Eq. 1-9 for the positive (``pos_layer``, sensitive heads) and the negative (``neg_layer``, insensitive
        heads) anchor at once, stacked on a kind axis (``[:, 0]`` pos, ``[:, 1]`` neg): the same element-wise
        operations and reductions as one anchor at a time, in half the tensor calls."""
        c, layers = self.config, (self.pos, self.neg)
        phi = torch.stack([self.phi_sum[i] / self.phi_n[i].clamp(min=1)[:, None] for i in layers], 1)  # (B, 2, H)
        sd, mu = torch.std_mean(phi, -1, correction=int(c.phi_std == "sample"), keepdim=True)
        if self._sign is None or self._sign.device != phi.device:
            self._sign = torch.tensor([[1.0], [-1.0]], device=phi.device)  # (2, 1): pos, neg
            self._is_pos = torch.tensor([[True], [False]], device=phi.device)
        thr = mu + c.lambda_vis * sd * self._sign  # mu + lambda*sd (pos), mu - lambda*sd (neg)
        heads = torch.where(self._is_pos, phi > thr, phi < thr)  # Eq. 2-3: (B, 2, H)
        empty = ~heads.any(-1)  # (B, 2)
        if c.empty_heads == "top1" and bool(empty.any()):
            pick = torch.stack([phi[:, 0].argmax(-1), phi[:, 1].argmin(-1)], 1)  # top / bottom head by Phi
            fallback = torch.zeros_like(heads).scatter_(-1, pick[..., None], True)
            heads = torch.where(empty[..., None], fallback, heads)
        last = torch.stack([self.last[i] for i in layers], 1)  # (B, 2, H, n_max)
        w = heads.to(last.dtype)
        m = (last * w[..., None]).sum(2) / w.sum(2).clamp(min=1)[..., None]  # Eq. 4 (capture.head_average)
        z = anchor_mask(m, c, visual) & heads.any(-1, keepdim=True)  # Eq. 8-9 over each row's own tokens
        for k, kind in enumerate(("pos", "neg")):
            self.z[kind], self.maps[kind], self.heads[kind] = z[:, k], m[:, k], heads[:, k]
        self.fresh = False
        if phase == "prefill":
            self.diag_prefill = self._counts()

    # ------------------------------------------------------------------ re-anchoring (drift layers)
    @hallufix.hookimpl
    def hallufix_attn_bias(self, event):
        # every drift layer of a forward sees the same anchors and key length: declared per_forward, so the core
        # calls this once per forward and reuses the terms at the other drift layers, also when stacked
        if self.fresh:
            self._anchors(event.visual, event.forward.phase)
        bias = self._anchor_bias(event.visual, event.kv_len)
        if bias is not None:
            event.add(bias)

    def _anchor_bias(self, visual, kv_len: int) -> torch.Tensor | None:
        """``(B, 1, kv)`` additive logit bias log(1 + alpha Zpos - beta Zneg) on the visual keys (Eq. 10-11 in
        logit space; a factor clamped at 0 masks the key), or ``None`` when no row has an anchor token."""
        c = self.config
        zpos, zneg = self.z["pos"], self.z["neg"]
        a, b = (-c.alpha, -c.beta) if c.reverse else (c.alpha, c.beta)
        a, b = (a if c.use_pos else 0.0), (b if c.use_neg else 0.0)
        active = (zpos if a else torch.zeros_like(zpos)) | (zneg if b else torch.zeros_like(zneg))
        if not bool(active.any()):
            return None  # no anchor token in any row: nothing to re-weight
        # the factor 1 + a*Zpos - b*Zneg takes four values; its log (clamped at 0 -> -inf: the key is masked)
        log_of = lambda w: math.log(w) if w > 0 else -math.inf  # noqa: E731
        log_w = torch.where(zpos, torch.where(zneg, log_of(1 + a - b), log_of(1 + a)),
                            torch.where(zneg, log_of(1 - b), 0.0))
        bias = C.scatter_visual(log_w, visual, kv_len, fill=0.0)  # (B, kv); padded slots (log 1 = 0) dropped
        return bias[:, None, :]

    # ------------------------------------------------------------------ beam search
    @hallufix.hookimpl
    def hallufix_beam_reorder(self, parents):
        """Beam search continued each new row from old row ``parents[i]``: Eq. 1's running sums (the prompt's text
        rows plus the hypothesis' own generated rows) and the anchors follow their beams."""
        for layer in self.phi_sum:
            self.phi_sum[layer] = self.phi_sum[layer][parents]
            self.phi_n[layer] = self.phi_n[layer][parents]
        for layer in self.last:
            self.last[layer] = self.last[layer][parents]
        for store in (self.z, self.maps, self.heads):
            for kind, value in store.items():
                if value is not None:
                    store[kind] = value[parents]

    # ------------------------------------------------------------------ diagnostics
    def _counts(self) -> list[dict]:
        out = []
        for r in range(self.z["pos"].shape[0]):
            out.append({"sensitive_heads": int(self.heads["pos"][r].sum()),
                        "insensitive_heads": int(self.heads["neg"][r].sum()),
                        "positive_anchors": int(self.z["pos"][r].sum()),
                        "negative_anchors": int(self.z["neg"][r].sum())})
        return out

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        if self.qformer is not None:
            return self.qformer.diagnostics(batch, self.name)
        if self.fresh:  # probes after the last drift layer ran (not in a normal forward)
            self._anchors(batch.visual, "decode")
        if self.z["pos"] is None:
            return
        last = self._counts()
        out = []
        for r in range(batch.batch_size):
            d = {"layers": {"neg": self.neg, "pos": self.pos, "drift": [self.drift[0], self.drift[-1]]},
                 "prefill": self.diag_prefill[r] if self.diag_prefill else None, "last_step": last[r]}
            if self.config.record_maps:  # the row's own visual tokens (no padded slot)
                n = batch.visual.n[r]
                d["positive_map"] = self.maps["pos"][r, :n].tolist()
                d["negative_map"] = self.maps["neg"][r, :n].tolist()
            out.append(d)
        return out
