"""Shared measurements over attention that every method reuses instead of re-deriving.

All functions take the probe rows a :class:`~hallufix.events.ProbsEvent` carries (never whole attention
matrices) and the batch's :class:`~hallufix.visual.VisualTokens` (``event.visual``). Shapes: ``B`` batch, ``H``
heads, ``R`` rows, ``kv`` keys, ``n_max`` the largest visual-token count of a row.

Rows may hold different numbers of visual tokens: values over visual tokens are ``(B, ..., n_max)`` with padded
slots 0, and every per-row statistic (mean, std, z-score, quantile, top-k) takes the description (or its
``valid (B, n_max)`` mask) and runs over each row's own tokens. Statistics are computed in the input's dtype: pass
float32 (probe rows are float32 already). Everything stays on the input's device.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hallufix.visual import VisualTokens


def visual_mass(probs: torch.Tensor, visual_keys: torch.Tensor) -> torch.Tensor:
    """Attention mass on visual keys: ``probs (B, H, R, kv)``, ``visual_keys (B, kv)`` -> ``(B, H, R)``."""
    return (probs * visual_keys[:, None, None, :].to(probs.dtype)).sum(-1)


def _valid(x: torch.Tensor, valid) -> torch.Tensor | None:
    """The ``(B, n)`` valid mask from a :class:`VisualTokens`, a bool tensor or ``None``, broadcast to ``x``."""
    if valid is None:
        return None
    if isinstance(valid, VisualTokens):
        if valid.uniform:  # no padded slot: the plain (faster) reductions
            return None
        valid = valid.valid
    v = valid
    if v.dim() < x.dim():
        v = v.view(v.shape[0], *([1] * (x.dim() - v.dim())), *v.shape[1:])
    return v


def gather_visual(rows: torch.Tensor, visual: VisualTokens) -> torch.Tensor:
    """Columns of the visual keys: ``rows (B, ..., kv)`` -> ``(B, ..., n_max)``, each row's own visual tokens in
    slot order, padded slots 0 (same dtype and device as ``rows``).

    Works on key columns (probe rows) and on prefill query rows alike (``(B, P)`` hidden norms): visual tokens
    sit in the prompt, so their positions are the same in both."""
    idx = visual.index
    n = idx.shape[1]
    shape = rows.shape[:-1] + (n,)
    out = torch.gather(rows, -1, idx.view(idx.shape[0], *([1] * (rows.dim() - 2)), n).expand(shape))
    if visual.uniform:
        return out
    return out.masked_fill(~_valid(out, visual), 0)


def scatter_visual(values: torch.Tensor, visual: VisualTokens, kv_len: int, fill: float = 0.0) -> torch.Tensor:
    """Inverse of :func:`gather_visual`: ``values (B, ..., n_max)`` placed at each row's visual keys of a
    ``(B, ..., kv_len)`` tensor holding ``fill`` elsewhere (padded slots are dropped, never written).

    Padded slots go to a dump column at the prompt length ``P`` (one past the last possible visual key), which is
    cut off; keys after the prompt (generated tokens) are never visual and hold ``fill``."""
    B, n = visual.index.shape
    lead = values.shape[:-1]
    if visual.uniform:
        idx = visual.index.view(B, *([1] * (values.dim() - 2)), n).expand(values.shape)
        out = torch.full(lead + (kv_len,), fill, dtype=values.dtype, device=values.device)
        return out.scatter(-1, idx, values)
    P = visual.prompt_len
    idx = visual.scatter_index.view(B, *([1] * (values.dim() - 2)), n).expand(values.shape)
    out = torch.full(lead + (max(kv_len, P) + 1,), fill, dtype=values.dtype, device=values.device)
    out = out.scatter(-1, idx, values)
    out[..., P] = fill  # the dump column (a generated key when kv_len > P) gets its fill back
    return out[..., :kv_len]


def head_average(maps: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over heads of ``maps (B, H, ...)``; ``heads`` is a ``(B, H)`` or ``(H,)`` bool subset (empty subsets
    give zeros). Padded slots of ``maps`` stay 0."""
    if heads is None:
        return maps.mean(1)
    w = heads.to(maps.dtype)
    w = w[None].expand(maps.shape[0], -1) if w.dim() == 1 else w
    w = w.view(*w.shape, *([1] * (maps.dim() - 2)))
    return (maps * w).sum(1) / w.sum(1).clamp(min=1)


def normalise(p: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``p (..., n)`` rescaled to sum to 1 (padded slots, being 0, stay 0)."""
    return p / p.sum(-1, keepdim=True).clamp(min=eps)


def entropy(p: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Shannon entropy (nats) of the normalised rows of ``p (..., n)`` -> ``(...)``; zero (padded) slots add 0."""
    q = normalise(p)
    return -(q * torch.log(q.clamp(min=eps))).sum(-1)


def masked_std_mean(x: torch.Tensor, valid=None, correction: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(std, mean)`` of ``x (B, ..., n)`` over the last dim, counting only ``valid`` slots (a
    :class:`VisualTokens`, a ``(B, n)`` bool mask, or ``None`` = all); keepdim. ``correction``: 0 population std,
    1 sample std (Bessel). A row with ``<= correction`` valid entries has std 0."""
    v = _valid(x, valid)
    if v is None:
        if x.shape[-1] > correction:
            return torch.std_mean(x, -1, correction=correction, keepdim=True)
        mu = x.mean(-1, keepdim=True)
        return torch.zeros_like(mu), mu
    w = v.to(x.dtype)
    k = w.sum(-1, keepdim=True)
    mu = (x * w).sum(-1, keepdim=True) / k.clamp(min=1)
    var = (((x - mu) ** 2) * w).sum(-1, keepdim=True) / (k - correction).clamp(min=1)
    return torch.where(k > correction, var, torch.zeros_like(var)).sqrt(), mu


def zscore(x: torch.Tensor, valid=None, eps: float = 1e-6, unbiased: bool = False) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` over the last dim of ``x (B, ..., n)``, per row over its ``valid`` slots
    (population std by default, ``unbiased`` for the sample std); padded slots give 0."""
    sd, mu = masked_std_mean(x, valid, int(unbiased))
    z = (x - mu) / (sd + eps)
    v = _valid(x, valid)
    return z if v is None else z.masked_fill(~v, 0)


def zscore_mask(x: torch.Tensor, tau: float, valid=None, eps: float = 1e-6, unbiased: bool = False) -> torch.Tensor:
    """Outliers above ``tau`` standard deviations: ``zscore(x) > tau`` (bool, same shape; padded slots False)."""
    return zscore(x, valid, eps, unbiased) > tau


def quantile(x: torch.Tensor, q: float, valid=None) -> torch.Tensor:
    """The ``q``-quantile (linear interpolation, as ``torch.quantile``) of each row of ``x (..., n)`` over its
    ``valid`` slots, keepdim, float32."""
    xf = x.float()
    v = _valid(xf, valid)
    if v is None:
        return torch.quantile(xf, q, dim=-1, keepdim=True)
    return torch.nanquantile(xf.masked_fill(~v, float("nan")), q, dim=-1, keepdim=True)


def quantile_mask(x: torch.Tensor, q: float, valid=None, below: bool = True) -> torch.Tensor:
    """Valid entries of ``x (..., n)`` strictly below (or at/above) the ``q``-quantile of their row's valid slots;
    padded slots False."""
    theta = quantile(x, q, valid)
    out = x.float() < theta if below else x.float() >= theta
    v = _valid(x, valid)
    return out if v is None else out & v


def hellinger(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hellinger distance between normalised rows: ``sqrt(sum (sqrt p - sqrt q)^2) / sqrt 2`` in [0, 1] (padded
    slots, 0 in both, add nothing)."""
    p, q = normalise(p), normalise(q)
    return torch.sqrt(((p.sqrt() - q.sqrt()) ** 2).sum(-1)) / 2 ** 0.5


@dataclass
class PrefillCapture:
    """Result of an analysis prefill (:meth:`hallufix.api.MethodRun.capture`).

    Tensors are float32 on the model's device; copy to host explicitly (``.cpu()``) for NumPy analysis.

    Attributes:
        last_visual: ``{layer: (B, H, n_max)}`` the last prompt row's attention over the visual tokens, per head
            (slots of :attr:`visual`; padded slots 0).
        last_mass: ``{layer: (B, H)}`` that row's total visual mass.
        text_mass: ``{layer: (B, H)}`` the visual mass averaged over the prompt's text rows (when asked).
        hidden_norms: ``{layer: (B, n_max)}`` L2 norms of the visual tokens' input hidden states (when asked).
        layout: the :class:`~hallufix.layout.TokenLayout` of the analysed batch (grids per image).
        extras: per-layer tensors that methods asked the capture for (``{name: {layer: tensor}}``).
        token_to_patch: ``(B, n_visual, rows*cols)`` each visual token's weights over the vision encoder's patch
            grid (raster order), when asked with ``token_to_patch=True`` on a model whose capabilities declare it;
            else ``None``.
        patch_grid: ``(rows, cols)`` of that patch grid, else ``None``.
    """

    last_visual: dict = field(default_factory=dict)
    last_mass: dict = field(default_factory=dict)
    text_mass: dict = field(default_factory=dict)
    hidden_norms: dict = field(default_factory=dict)
    layout: object = None
    extras: dict = field(default_factory=dict)
    token_to_patch: object = None
    patch_grid: tuple | None = None

    @property
    def visual(self) -> VisualTokens:
        """The analysed batch's :class:`~hallufix.visual.VisualTokens` (per-row counts, grids, image slots)."""
        return self.layout.visual_tokens
