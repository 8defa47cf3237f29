"""Pure tensor kernels of the hallufix attention function (:mod:`hallufix.intercept.attention`).

No state, no hooks, no memo: each function maps tensors to tensors and is unit-tested against a plain eager
computation (``tests/test_attention_kernels.py``). Shapes: ``B`` batch, ``H`` query heads, ``Hkv`` key/value heads
(``H = Hkv * n_rep``, query head ``h`` reads key/value head ``h // n_rep``, transformers' ``repeat_kv`` layout),
``q`` query rows of the forward, ``R`` selected rows, ``kv`` keys, ``D`` head dim. Every tensor stays on the
device of its inputs; dtypes are stated per function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def row_mask(attention_mask, rows: torch.Tensor, q_len: int, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive float mask ``(B|1, 1, R, kv)`` in ``dtype`` for the query ``rows`` (indices into ``q``), from the
    mask SDPA received: ``None`` means causal with the queries at the end of the cache, a bool mask ``(B, 1, q,
    kv')`` is True where a key is visible, a float mask is already additive. Masked keys get the dtype's finite
    minimum (never ``-inf``: a fully masked padding row stays finite)."""
    neg = torch.finfo(dtype).min
    if attention_mask is None and q_len == 1:  # one row at the end of the cache: every key is visible
        return torch.zeros((1, 1, len(rows), kv_len), dtype=dtype, device=rows.device)
    if attention_mask is None:
        qpos = kv_len - q_len + rows
        allowed = torch.arange(kv_len, device=rows.device)[None, :] <= qpos[:, None]
        return torch.where(allowed, 0.0, neg).to(dtype)[None, None]
    sub = attention_mask[:, :, rows, :kv_len]
    if sub.dtype == torch.bool:
        return torch.where(sub, 0.0, neg).to(dtype)
    return sub.to(dtype)


def add_bias_terms(mask: torch.Tensor, terms, rows: torch.Tensor) -> torch.Tensor:
    """``mask`` ``(B|1, 1, R, kv)`` plus every bias term on the rows it applies to, clamped at the dtype's finite
    minimum.

    ``terms``: ``[(column_bias (B, 1|H, kv), row_sel (B, q) bool), ...]`` (bias in ``mask``'s dtype or castable to
    it, ``-inf`` allowed); ``rows`` ``(R,)``: the indices into ``q`` that ``mask`` covers. A term applies only to
    its rows through ``torch.where`` on the selection, never ``sel * bias`` (``0 * -inf`` is NaN, and a NaN in a
    padding row's output reaches every row through the values); the clamp makes ``-inf`` biases mask keys without
    ever leaving a row of ``-inf``. Returns ``(B, 1|H, R, kv)`` in ``mask``'s dtype."""
    for col_bias, sel_rows in terms:
        sel = sel_rows[:, rows][:, None, :, None]  # (B, 1, R, 1)
        mask = torch.where(sel, mask + col_bias[:, :, None, :].to(mask.dtype), mask)
    return mask.clamp(min=torch.finfo(mask.dtype).min)


def _grouped(query: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, H, R, D)`` -> ``(B, Hkv, n_rep * R, D)``: the rows of the ``n_rep`` query heads sharing one key/value
    head stacked, so one matmul against the un-repeated keys serves them (no ``repeat_kv`` copy of the cache)."""
    B, H, R, D = query.shape
    return query.reshape(B, H // n_rep, n_rep * R, D)


def probe_probs(query_rows: torch.Tensor, key: torch.Tensor, scaling: float,
                mask: torch.Tensor | None) -> torch.Tensor:
    """Post-softmax probabilities ``(B, H, R, kv)`` **float32** of the query rows ``query_rows`` ``(B, H, R, D)``
    against ``key`` ``(B, Hkv, kv, D)``: ``softmax(q K^T * scaling + mask)``, the mask ``(B|1, 1|H, R, kv)`` added
    in the model dtype as eager attention does (``None``: no key masked), the softmax in float32 whatever the model
    dtype."""
    B, H, R, _ = query_rows.shape
    n_rep = H // key.shape[1]
    if n_rep == 1:
        scores = torch.matmul(query_rows, key.transpose(-1, -2))
    else:
        scores = torch.matmul(_grouped(query_rows, n_rep), key.transpose(-1, -2)).reshape(B, H, R, -1)
    scores = scores * scaling if mask is None else scores * scaling + mask
    return torch.softmax(scores.float(), dim=-1)


def probs_times_values(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``P @ V``: ``(B, H, R, D)`` in ``value``'s dtype from probabilities ``(B, H, R, kv)`` (any float dtype, cast
    to ``value``'s) and ``value`` ``(B, Hkv, kv, D)``, grouped heads without a copy of the values."""
    B, H, R, _ = probs.shape
    n_rep = H // value.shape[1]
    p = probs.to(value.dtype)
    if n_rep == 1:
        return torch.matmul(p, value)
    return torch.matmul(_grouped(p, n_rep), value).reshape(B, H, R, -1)


def rows_attention(query_rows: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                   scaling: float) -> torch.Tensor:
    """Attention output ``(B, H, R, D)`` in the model dtype of the rows ``query_rows`` ``(B, H, R, D)`` under the
    additive float ``mask`` ``(B|1, 1|H, R, kv)``, through SDPA (grouped-query heads expanded inside the kernel)."""
    n_rep = query_rows.shape[1] // key.shape[1]
    return F.scaled_dot_product_attention(query_rows, key, value, attn_mask=mask, scale=scaling,
                                          enable_gqa=n_rep > 1)


def merge_rows(out: torch.Tensor | None, out_rows: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Layer output ``(B, q, H, D)``: ``out`` (the fused output of every row, or ``None`` when every row was
    recomputed) with the rows ``rows`` ``(R,)`` replaced by ``out_rows`` ``(B, H, R, D)``. ``out`` is written in
    place and returned: pass a tensor nothing else holds (the fused kernel's fresh output)."""
    out_rows = out_rows.transpose(1, 2)
    if out is None:
        return out_rows.contiguous()
    out[:, rows] = out_rows
    return out


def probe_row_index(kinds, q_len: int, text_rows_any: torch.Tensor | None, device,
                    last_rows: int = 1) -> torch.Tensor:
    """``(R,)`` long: the query rows a probe of row ``kinds`` (``{"last", "text", "all"}``) materialises, in
    increasing order. ``text_rows_any`` ``(q,)`` bool: rows that are text in any batch row (needed for
    ``"text"``); ``last_rows``: how many final rows count as "last" (``k`` in a beam look-ahead forward)."""
    if "all" in kinds:
        return torch.arange(q_len, device=device)
    probe = torch.zeros(q_len, dtype=torch.bool, device=device)
    if "last" in kinds:
        probe[q_len - last_rows:] = True
    if "text" in kinds:
        probe |= text_rows_any
    return probe.nonzero().squeeze(1)


def scale_heads(out: torch.Tensor, gains: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Per-head outputs ``(B, q, H, D)`` times ``gains`` ``(H,)`` or ``(B, H)`` (cast to ``out``'s dtype).

    ``inplace``: multiply ``out`` itself (the caller owns it and no autograd graph needs it): no second tensor of
    the whole layer output at prefill (1.3 MB per layer on the CPU benchmark model)."""
    g = gains.to(out.dtype)
    g = g[None, None, :, None] if g.dim() == 1 else g[:, None, :, None]
    return out.mul_(g) if inplace else out * g
