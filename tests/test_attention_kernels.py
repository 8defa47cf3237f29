"""The attention function's pure kernels (:mod:`hallufix.intercept.kernels`), one by one, against plain eager
computations written here from the definitions, with real grouped-query shapes (4 query heads over 2 key/value
heads), a left-padded batch and float32 / bfloat16; and the typed per-forward memo (:mod:`hallufix.forward`)."""
from __future__ import annotations

import math

import pytest
import torch

from hallufix.forward import ForwardInfo, MaskKey, Ref, RowsKey
from hallufix.intercept import kernels as K

B, H, HKV, D, Q, KV = 2, 4, 2, 8, 5, 9
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _qkv(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Q, D, generator=g).to(dtype)
    k = torch.randn(B, HKV, KV, D, generator=g).to(dtype)
    v = torch.randn(B, HKV, KV, D, generator=g).to(dtype)
    return q, k, v


def _rep(x):
    """Eager ``repeat_kv``: key/value head ``j`` serves query heads ``j * n_rep .. (j + 1) * n_rep - 1``."""
    return x.repeat_interleave(H // HKV, dim=1)


def _padded_bool_mask():
    """``(B, 1, Q, KV)`` bool: causal with the queries at the end of the cache; row 1 left-padded by 3 keys."""
    m = torch.zeros(B, 1, Q, KV, dtype=torch.bool)
    for b in range(B):
        for i in range(Q):
            for j in range(KV):
                m[b, 0, i, j] = j <= KV - Q + i and not (b == 1 and j < 3)
    return m


def test_row_mask_from_none_bool_and_float_masks():
    rows = torch.tensor([1, 4])
    dt = torch.float32
    neg = torch.finfo(dt).min
    # None at a single decode row: every key visible
    assert torch.equal(K.row_mask(None, torch.tensor([0]), 1, KV, dt), torch.zeros(1, 1, 1, KV))
    # None with several rows: causal, the rows at the end of the cache
    got = K.row_mask(None, rows, Q, KV, dt)
    want = torch.tensor([[0.0 if j <= KV - Q + int(r) else neg for j in range(KV)] for r in rows])[None, None]
    assert torch.equal(got, want)
    mask = _padded_bool_mask()
    want = torch.where(mask[:, :, rows], 0.0, neg)
    assert torch.equal(K.row_mask(mask, rows, Q, KV, dt), want)
    additive = torch.where(mask, 0.0, neg)
    assert torch.equal(K.row_mask(additive, rows, Q, KV, dt), additive[:, :, rows])
    assert torch.isfinite(K.row_mask(mask, rows, Q, KV, torch.bfloat16)).all()


def test_add_bias_terms_applies_each_term_to_its_rows_only_and_never_gives_nan():
    mask = K.row_mask(_padded_bool_mask(), torch.arange(Q), Q, KV, torch.float32)
    b1 = torch.randn(B, 1, KV)
    b2 = torch.zeros(B, H, KV)
    b2[:, :, 2] = -math.inf  # a masked key on every head
    r1 = torch.tensor([[True, False, True, False, True], [False, False, False, True, True]])
    r2 = torch.tensor([[False, True, True, False, False], [True] * Q])
    rows = torch.tensor([0, 2, 3, 4])
    got = K.add_bias_terms(mask[:, :, rows], [(b1, r1), (b2, r2)], rows)
    want = torch.empty(B, H, len(rows), KV)
    for b in range(B):
        for h in range(H):
            for i, r in enumerate(rows.tolist()):
                row = mask[b, 0, r].clone()
                if r1[b, r]:
                    row = row + b1[b, 0]
                if r2[b, r]:
                    row = row + b2[b, h]
                want[b, h, i] = row.clamp(min=torch.finfo(torch.float32).min)
    assert torch.equal(got, want)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probe_probs_equals_eager_softmax_over_repeated_keys(dtype):
    q, k, _ = _qkv(dtype)
    rows = torch.tensor([1, 4])
    mask = K.row_mask(_padded_bool_mask(), rows, Q, KV, dtype)
    scale = D ** -0.5
    got = K.probe_probs(q[:, :, rows], k, scale, mask)
    assert got.dtype == torch.float32 and got.shape == (B, H, len(rows), KV)
    scores = (q[:, :, rows].float() @ _rep(k).float().transpose(-1, -2)) * scale + mask.float()
    want = torch.softmax(scores, -1)
    assert (got - want).abs().max() <= TOL[dtype]
    # no mask (a decode row that sees every key)
    got1 = K.probe_probs(q[:, :, -1:], k, scale, None)
    want1 = torch.softmax((q[:, :, -1:].float() @ _rep(k).float().transpose(-1, -2)) * scale, -1)
    assert (got1 - want1).abs().max() <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probs_times_values_equals_eager(dtype):
    _, _, v = _qkv(dtype, seed=1)
    p = torch.softmax(torch.randn(B, H, 3, KV), -1)
    got = K.probs_times_values(p, v)
    assert got.dtype == dtype and got.shape == (B, H, 3, D)
    want = p.to(dtype).float() @ _rep(v).float()
    assert (got.float() - want).abs().max() <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_attention_equals_eager_attention_of_those_rows(dtype):
    q, k, v = _qkv(dtype, seed=2)
    rows = torch.tensor([0, 3])
    mask = K.add_bias_terms(K.row_mask(_padded_bool_mask(), rows, Q, KV, dtype),
                            [(torch.randn(B, 1, KV).to(dtype), torch.ones(B, Q, dtype=torch.bool))], rows)
    scale = D ** -0.5
    got = K.rows_attention(q[:, :, rows], k, v, mask, scale)
    a = torch.softmax((q[:, :, rows].float() @ _rep(k).float().transpose(-1, -2)) * scale + mask.float(), -1)
    want = a @ _rep(v).float()
    assert got.shape == (B, H, len(rows), D)
    assert (got.float() - want).abs().max() <= TOL[dtype] * 4


def test_merge_rows_replaces_only_those_rows():
    out = torch.randn(B, Q, H, D)
    before = out.clone()
    rows = torch.tensor([1, 3])
    new = torch.randn(B, H, 2, D)
    got = K.merge_rows(out, new, rows)
    want = before.clone()
    want[:, 1], want[:, 3] = new[:, :, 0], new[:, :, 1]
    assert torch.equal(got, want)
    every = K.merge_rows(None, torch.randn(B, H, Q, D), torch.arange(Q))
    assert every.shape == (B, Q, H, D) and every.is_contiguous()


def test_probe_row_index_by_kind():
    text = torch.tensor([False, True, True, False, False])
    assert K.probe_row_index({"last"}, Q, None, "cpu").tolist() == [4]
    assert K.probe_row_index({"text"}, Q, text, "cpu").tolist() == [1, 2]
    assert K.probe_row_index({"text", "last"}, Q, text, "cpu").tolist() == [1, 2, 4]
    assert K.probe_row_index({"all", "last"}, Q, None, "cpu").tolist() == list(range(Q))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scale_heads_equals_per_head_multiplication(dtype):
    out = torch.randn(B, Q, H, D).to(dtype)
    g1, g2 = torch.tensor([1.5, 0.5, 1.0, 2.0]), torch.rand(B, H) + 0.5
    for g in (g1, g2):
        got = K.scale_heads(out, g)
        want = out.clone()
        for b in range(B):
            for h in range(H):
                want[b, :, h] = out[b, :, h] * (g[h] if g.dim() == 1 else g[b, h]).to(dtype)
        assert got.dtype == dtype and torch.equal(got, want)


def test_memo_keys_compare_objects_by_identity_and_the_method_cache_is_per_owner_and_per_forward():
    a, b = torch.zeros(2), torch.zeros(2)  # equal values, different objects
    assert Ref(a) == Ref(a) and Ref(a) != Ref(b)
    k1 = MaskKey(Ref(a), 9, torch.float32, RowsKey("one", 1))
    assert k1 == MaskKey(Ref(a), 9, torch.float32, RowsKey("one", 1))
    assert k1 != MaskKey(Ref(b), 9, torch.float32, RowsKey("one", 1))
    fwd = ForwardInfo("decode", 1, 1, 8)
    calls = []
    owner1, owner2 = object(), object()
    make = lambda tag: lambda: calls.append(tag) or tag  # noqa: E731
    assert fwd.cache(owner1, "bias", make("x")) == "x"
    assert fwd.cache(owner1, "bias", make("y")) == "x"  # the same forward: cached
    assert fwd.cache(owner2, "bias", make("z")) == "z"  # another method: its own entry
    assert ForwardInfo("decode", 2, 1, 9).cache(owner1, "bias", make("w")) == "w"  # the next forward: fresh
    assert calls == ["x", "z", "w"]
