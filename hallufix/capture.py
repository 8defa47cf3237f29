"""Shared measurements over attention that every method reuses instead of re-deriving.

All functions take the probe rows a :class:`~hallufix.events.ProbsEvent` carries (never whole attention
matrices) and the visual-key mask of the batch. Shapes: ``B`` batch, ``H`` heads, ``R`` rows, ``kv`` keys,
``n`` visual tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def visual_mass(probs: torch.Tensor, visual_keys: torch.Tensor) -> torch.Tensor:
    """Attention mass on visual keys: ``probs (B, H, R, kv)``, ``visual_keys (B, kv)`` -> ``(B, H, R)``."""
    return (probs * visual_keys[:, None, None, :].to(probs.dtype)).sum(-1)


def visual_mass_lse(scores: torch.Tensor, visual_keys: torch.Tensor) -> torch.Tensor:
    """The same mass from pre-softmax ``scores (B, H, R, kv)`` (masked entries very negative) with two
    log-sum-exps: ``exp(LSE_vis - LSE_all)``; never normalises the whole row."""
    neg = torch.finfo(scores.dtype).min
    vis = torch.where(visual_keys[:, None, None, :], scores, torch.full_like(scores, neg))
    return torch.exp(torch.logsumexp(vis, -1) - torch.logsumexp(scores, -1))


def visual_index(visual_keys: torch.Tensor) -> torch.Tensor:
    """``(B, n)`` key indices of the visual tokens of ``visual_keys (B, kv)``; every batch row must hold ``n``.
    Visual tokens sit in the prompt, so the index of the prompt's mask stays valid at every decode step."""
    counts = visual_keys.sum(1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("batch rows have different numbers of visual tokens")
    return visual_keys.nonzero()[:, 1].view(visual_keys.shape[0], int(counts[0]))


def gather_visual(rows: torch.Tensor, visual_keys: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Columns of the visual keys: ``rows (B, ..., kv)`` -> ``(B, ..., n)``; every batch row must hold ``n``.
    ``index``: :func:`visual_index` of the same batch, when the caller keeps it (saves recomputing it)."""
    idx = visual_index(visual_keys) if index is None else index
    n = idx.shape[1]
    shape = rows.shape[:-1] + (n,)
    idx = idx.view(idx.shape[0], *([1] * (rows.dim() - 2)), n).expand(shape)
    return torch.gather(rows, -1, idx)


def scatter_visual(values: torch.Tensor, visual_keys: torch.Tensor, fill: float = 0.0,
                   index: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`gather_visual`: ``values (B, ..., n)`` placed into ``(B, ..., kv)`` at the visual keys.
    ``index``: :func:`visual_index` of the same batch, when the caller keeps it."""
    B, kv = visual_keys.shape
    n = values.shape[-1]
    idx = visual_keys.nonzero()[:, 1].view(B, n) if index is None else index
    out = torch.full(values.shape[:-1] + (kv,), fill, dtype=values.dtype, device=values.device)
    idx = idx.view(B, *([1] * (values.dim() - 2)), n).expand(values.shape)
    return out.scatter(-1, idx, values)


def head_average(maps: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over heads of ``maps (B, H, ...)``; ``heads`` is a ``(B, H)`` or ``(H,)`` bool subset (empty subsets
    give zeros)."""
    if heads is None:
        return maps.mean(1)
    w = heads.to(maps.dtype)
    w = w[None].expand(maps.shape[0], -1) if w.dim() == 1 else w
    w = w.view(*w.shape, *([1] * (maps.dim() - 2)))
    return (maps * w).sum(1) / w.sum(1).clamp(min=1)


def normalise(p: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``p (..., n)`` rescaled to sum to 1."""
    return p / p.sum(-1, keepdim=True).clamp(min=eps)


def entropy(p: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Shannon entropy (nats) of the normalised rows of ``p (..., n)`` -> ``(...)``."""
    q = normalise(p)
    return -(q * torch.log(q.clamp(min=eps))).sum(-1)


def zscore(x: torch.Tensor, dim: int = -1, eps: float = 1e-6, unbiased: bool = False) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` along ``dim`` (population std by default)."""
    if x.shape[dim] > 1:
        sd, mu = torch.std_mean(x, dim, correction=int(unbiased), keepdim=True)
    else:
        mu = x.mean(dim, keepdim=True)
        sd = torch.zeros_like(mu)
    return (x - mu) / (sd + eps)


def zscore_mask(x: torch.Tensor, tau: float, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    """Outliers above ``tau`` standard deviations: ``zscore(x) > tau`` (bool, same shape)."""
    return zscore(x, dim, eps) > tau


def quantile_mask(x: torch.Tensor, q: float, below: bool = True) -> torch.Tensor:
    """Entries of ``x (..., n)`` strictly below (or at/above) the ``q``-quantile of their row."""
    theta = torch.quantile(x.float(), q, dim=-1, keepdim=True).to(x.dtype)
    return x < theta if below else x >= theta


def hellinger(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hellinger distance between normalised rows: ``sqrt(sum (sqrt p - sqrt q)^2) / sqrt 2`` in [0, 1]."""
    p, q = normalise(p), normalise(q)
    return torch.sqrt(((p.sqrt() - q.sqrt()) ** 2).sum(-1)) / 2 ** 0.5


def js_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between normalised rows."""
    p, q = normalise(p), normalise(q)
    m = (p + q) / 2
    kl = lambda a, b: (a * (torch.log(a.clamp(min=eps)) - torch.log(b.clamp(min=eps)))).sum(-1)  # noqa: E731
    return (kl(p, m) + kl(q, m)) / 2


def to_grid(values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Visual-token values ``(..., rows*cols)`` in raster order -> ``(..., rows, cols)``."""
    return values.reshape(*values.shape[:-1], grid[0], grid[1])


@dataclass
class PrefillCapture:
    """Result of an analysis prefill (:meth:`hallufix.api.MethodRun.capture`).

    Attributes:
        last_visual: ``{layer: (B, H, n)}`` the last prompt row's attention over the visual tokens, per head.
        last_mass: ``{layer: (B, H)}`` that row's total visual mass.
        hidden_norms: ``{layer: (B, n)}`` L2 norms of the visual tokens' input hidden states (when asked).
        layout: the :class:`~hallufix.layout.TokenLayout` of the analysed batch (grids per image).
        extras: per-layer tensors that methods asked the capture for (``{name: {layer: tensor}}``).
    """

    last_visual: dict = field(default_factory=dict)
    last_mass: dict = field(default_factory=dict)
    hidden_norms: dict = field(default_factory=dict)
    layout: object = None
    extras: dict = field(default_factory=dict)
