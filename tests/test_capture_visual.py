"""The per-batch visual-token description and the capture utilities over rows of different visual-token counts,
against per-row computations on each row's own tokens (the slices a user would take by hand)."""
from __future__ import annotations

import pytest
import torch

from hallufix import capture as C
from hallufix.layout import TokenLayout
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session

IMG = 9  # image token id of the synthetic layouts


def _layout():
    """Three rows, left padded: 6 tokens of one 2x3 image; 4 + 6 tokens of two images (2x2 then 3x2, their runs
    separated by a text token); 12 tokens of one 3x4 image (the longest row, no padding)."""
    P = 20
    rows = [
        [0] * 8 + [1, 2] + [IMG] * 6 + [3, 4, 5, 6],
        [0] * 2 + [1] + [IMG] * 4 + [7] + [IMG] * 6 + [3, 4, 5, 6, 5, 4],
        [1, 2] + [IMG] * 12 + [3, 4, 5, 6, 5, 4],
    ]
    ids = torch.tensor(rows)
    mask = (ids != 0).long()
    grids = [[(2, 3)], [(2, 2), (3, 2)], [(3, 4)]]
    assert ids.shape[1] == P
    return TokenLayout.from_inputs(ids, mask, IMG, grids)


def test_description_of_a_ragged_batch():
    lay = _layout()
    vt = lay.visual_tokens
    assert vt is lay.visual_tokens  # built once per layout
    assert vt.n == (6, 10, 12) and vt.counts.tolist() == [6, 10, 12] and vt.n_max == 12 and not vt.uniform
    for b in range(3):
        own = lay.visual[b].nonzero().squeeze(1)
        assert torch.equal(vt.index[b, : vt.n[b]], own)
        assert vt.valid[b].tolist() == [True] * vt.n[b] + [False] * (12 - vt.n[b])
    assert vt.ranges == (((0, 6),), ((0, 4), (4, 10)), ((0, 12),))
    assert vt.grid(1, 1) == (3, 2) and vt.image_slots(1, 1) == slice(4, 10) and vt.images(1) == 2
    # without grids: ranges from the runs of visual positions
    bare = TokenLayout.from_inputs(lay.input_ids, lay.valid.long(), IMG, [[None], [None, None], [None]])
    assert bare.visual_tokens.ranges == (((0, 6),), ((0, 4), (4, 10)), ((0, 12),))


@pytest.mark.parametrize("kv_extra", [0, 3])
def test_gather_and_scatter_are_exact_per_row(kv_extra):
    lay = _layout()
    vt, P = lay.visual_tokens, lay.prompt_len
    kv = P + kv_extra  # prefill, or a decode step with generated keys
    rows = torch.randn(3, 2, 5, kv)
    got = C.gather_visual(rows, vt)  # (3, 2, 5, 12)
    for b in range(3):
        own = lay.visual_keys(kv)[b]
        assert torch.equal(got[b, ..., : vt.n[b]], rows[b][..., own])
        assert (got[b, ..., vt.n[b]:] == 0).all()
    back = C.scatter_visual(got, vt, kv, fill=-7.0)
    vis = lay.visual_keys(kv)[:, None, None, :].expand_as(rows)
    assert torch.equal(back, torch.where(vis, rows, torch.full_like(rows, -7.0)))
    # -inf values and padded slots holding garbage never reach a non-visual key
    junk = got.masked_fill(~vt.valid[:, None, None, :], 123.0)
    back = C.scatter_visual(junk, vt, kv)
    assert torch.equal(back[~vis], torch.zeros_like(back[~vis]))


def test_statistics_run_over_each_rows_own_tokens():
    lay = _layout()
    vt = lay.visual_tokens
    x = torch.randn(3, 4, 12).masked_fill(~vt.valid[:, None, :], 0.0)  # (B, H, n_max), padded 0 as gathered
    z = C.zscore(x, vt, eps=1e-6)
    zs = C.zscore(x, vt, eps=1e-6, unbiased=True)
    q = C.quantile_mask(x, 0.3, vt)
    sd, mu = C.masked_std_mean(x, vt)
    for b in range(3):
        own = x[b, :, : vt.n[b]]
        s0, m0 = torch.std_mean(own, -1, correction=0, keepdim=True)
        s1 = own.std(-1, correction=1, keepdim=True)
        assert torch.allclose(mu[b], m0, atol=1e-6) and torch.allclose(sd[b], s0, atol=1e-6)
        assert torch.allclose(z[b, :, : vt.n[b]], (own - m0) / (s0 + 1e-6), atol=1e-5)
        assert torch.allclose(zs[b, :, : vt.n[b]], (own - m0) / (s1 + 1e-6), atol=1e-5)
        assert torch.equal(q[b, :, : vt.n[b]], own < torch.quantile(own, 0.3, dim=-1, keepdim=True))
        for t in (z, zs, q):
            assert not t[b, :, vt.n[b]:].any()  # padded slots inert
    # normalise / entropy / Hellinger of padded maps equal those of each row's own slots
    p, r = x.abs(), x.flip(-1).abs().masked_fill(~vt.valid[:, None, :], 0.0)
    for b in range(3):
        pb, rb = p[b, :, : vt.n[b]], r[b, :, : vt.n[b]]
        assert torch.allclose(C.entropy(p)[b], C.entropy(pb), atol=1e-6)
        assert torch.allclose(C.hellinger(p, r)[b], C.hellinger(pb, rb), atol=1e-6)


def test_uniform_batches_keep_the_plain_path():
    ids = torch.tensor([[0, 1, IMG, IMG, IMG, IMG, 3], [1, 2, IMG, IMG, IMG, IMG, 3]])
    lay = TokenLayout.from_inputs(ids, (ids != 0).long(), IMG, [[(2, 2)], [(2, 2)]])
    vt = lay.visual_tokens
    assert vt.uniform and vt.valid.all() and vt.n == (4, 4)
    x = torch.randn(2, 3, 4)
    assert torch.equal(C.zscore(x, vt), C.zscore(x))


def test_capture_and_probe_maps_of_a_mixed_size_qwen_batch():
    """``MethodRun.capture`` and ``ProbsEvent.visual_last`` on Qwen2.5-VL images of four sizes: each row's map over
    its own tokens equals the one-image capture of that row."""
    s = tiny_session("qwen2.5-vl", num_layers=4)
    images, qs = tiny_images(4, mixed=True), list(QUESTIONS[:4])
    run = s.start([])
    cap = run.capture(images, qs, layers=[1, 2], hidden_norms=True)
    vt = cap.visual
    assert len(set(vt.n)) == 4, vt.n
    for b in range(4):
        one = run.capture([images[b]], [qs[b]], layers=[1, 2], hidden_norms=True)
        assert one.visual.n == (vt.n[b],) and one.visual.grid(0) == vt.grid(b)
        for layer in (1, 2):
            got = cap.last_visual[layer][b, :, : vt.n[b]]
            assert (got - one.last_visual[layer][0]).abs().max() <= 1e-5
            assert (cap.hidden_norms[layer][b, : vt.n[b]] - one.hidden_norms[layer][0]).abs().max() <= 1e-4
            assert (cap.last_visual[layer][b, :, vt.n[b]:] == 0).all()
