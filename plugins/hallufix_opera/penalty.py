"""OPERA's over-trust penalty on one candidate's local attention window (docs/methods/opera.md, Eq. 2-4).

``window`` ``(N, k, n, n)``: for ``N`` beams and ``k`` candidates, the head-max, row-normalised last-layer attention
of the ``n`` response tokens (the ``n - 1`` generated so far and the candidate, last) over the response columns;
lower triangular. Column ``j``'s score is ``1e-7 * prod_{i >= j} (sigma * window[i, j])`` (the official code's
``1e-7`` prefactor), the penalty is its maximum over ``j`` and the location the arg-max. Computed in float32 (the
official code stores the scores in float16, where products above 65504 become ``inf``).
"""
from __future__ import annotations

import torch


def column_scores(window: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(N, k, n)``: ``1e-7 * prod_{i=j}^{n-1} sigma * window[..., i, j]`` for each column ``j``."""
    n = window.shape[-1]
    scaled = sigma * window.float()
    upper = torch.tril(torch.ones(n, n, dtype=torch.bool, device=window.device))  # rows i >= j
    factors = torch.where(upper, scaled, torch.ones_like(scaled))
    return 1e-7 * factors.prod(dim=-2)


def over_trust(window: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(penalty (N, k), location (N, k))``: the largest column score and its column (0 = first response token)."""
    return column_scores(window, sigma).max(dim=-1)
