"""Contrastive attention against an independent eager implementation of its steps (all three modes)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.integrations.sdpa_attention import repeat_kv

from hallufix.testing import MethodContract
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix.testing.reference import generate_with_attention, layout_of

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
FUSION, POST, REVIEW, RHO, LAM = [1, 2, 3], 5, 6, 0.25, 0.1
OVR = ["variant=review", "fusion_layers=1-3", f"post_layer={POST}", f"review_layer={REVIEW}", f"quantile={RHO}",
       f"scale={LAM}"]


class EagerContrast:
    """Full eager attention; the paper's steps written out with numpy: head-averaged renormalised last-row maps,
    Hellinger-argmax pre layer, |A_post - A_pre|, rho-quantile, then the chosen suppression at the review layer."""

    def __init__(self, vis, text, mode, all_rows=False):
        self.vis, self.text, self.mode, self.all_rows = vis, text, mode, all_rows
        self.maps, self.masked, self.chosen = {}, None, None

    def _cols(self, B, kv_len):
        cols = torch.zeros(B, kv_len, dtype=torch.bool)
        cols[:, : self.vis.shape[1]] = self.vis
        return cols

    def __call__(self, module, q, k, v, mask, scaling=None, dropout=0.0, **kw):
        layer = module.layer_idx
        B, kv_len, q_len = q.shape[0], k.shape[2], q.shape[2]
        cols = self._cols(B, kv_len)
        k, v = repeat_kv(k, module.num_key_value_groups), repeat_kv(v, module.num_key_value_groups)
        if layer == REVIEW and self.mode == "kv":
            km = torch.zeros(B, kv_len, dtype=torch.bool)
            for b in range(B):
                idx = cols[b].nonzero().squeeze(1)[torch.tensor(self.masked[b])]
                km[b, idx] = True
            k = torch.where(km[:, None, :, None], k * LAM, k)
            v = torch.where(km[:, None, :, None], v * LAM, v)
        s = (q @ k.transpose(-1, -2)) * scaling
        if mask is not None:
            s = s + mask[:, :, :, :kv_len]
        A = torch.softmax(s.float(), -1)
        if q_len == kv_len and (layer in FUSION or layer == POST):
            # per row over its own visual tokens (rows may hold different numbers of them)
            self.maps[layer] = [A[b, :, -1][:, cols[b]].mean(0).numpy() for b in range(B)]
            self.maps[layer] = [m / m.sum() for m in self.maps[layer]]
            if layer == POST:
                hel = lambda p, r: np.sqrt(((np.sqrt(p) - np.sqrt(r)) ** 2).sum(-1)) / np.sqrt(2)  # noqa: E731
                d = np.array([[hel(self.maps[f][b], self.maps[POST][b]) for f in FUSION] for b in range(B)])
                self.chosen = [FUSION[i] for i in d.argmax(-1)]
                c = [np.abs(self.maps[POST][b] - self.maps[f][b]) for b, f in enumerate(self.chosen)]
                self.masked = [cb < np.quantile(cb, RHO) for cb in c]
        if layer == REVIEW and self.mode == "attn":
            A = A.clone()
            P_ = self.vis.shape[1]
            for b in range(B):
                idx = cols[b].nonzero().squeeze(1)[torch.tensor(self.masked[b])]
                for i in range(q_len):
                    r = kv_len - q_len + i
                    if self.all_rows or r >= P_ or self.text[b, r]:
                        row = A[b, :, i].clone()
                        row[:, idx] *= LAM
                        A[b, :, i] = row / row.sum(-1, keepdim=True)
        return (A.to(v.dtype) @ v).transpose(1, 2).contiguous(), A


def _reference(s, images, qs, mode, all_rows=False):
    layout = layout_of(s, images, qs)
    ref = EagerContrast(layout.visual, layout.text, mode, all_rows)
    hooks = []
    if mode == "residual":
        def pre(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            if x.shape[1] == layout.prompt_len:  # prefill: scale the masked visual rows
                x = x.clone()
                for b in range(x.shape[0]):
                    idx = layout.visual[b].nonzero().squeeze(1)[torch.tensor(ref.masked[b])]
                    x[b, idx] *= LAM
                return ((x,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})
        hooks = [(s.model.get_decoder().layers[REVIEW], pre)]
    logits, _, _ = generate_with_attention(s, images, qs, ref, 3, pre_hooks=hooks)
    return ref, logits


@pytest.mark.parametrize("mode", ["attn", "attn+all_rows", "kv", "residual"])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_eager_steps(family, mode):
    s = tiny_session(family, num_layers=8)
    images, qs = tiny_images(2), ["is there a cat in the image ?", "what colour is it ?"]
    all_rows = mode == "attn+all_rows"
    mode = mode.split("+")[0]
    outs = s.start(["contrast"], {"contrast": OVR + [f"mode={mode}", f"rows={'all' if all_rows else 'text'}"]}
                   ).generate(images, qs, max_new_tokens=3, min_new_tokens=3, output_logits=True)
    ref, ref_logits = _reference(s, images, qs, mode, all_rows)
    for b, o in enumerate(outs):
        d = o.diagnostics["contrast"]
        assert d["pre_layer"] == ref.chosen[b]
        assert d["suppressed_tokens"] == int(ref.masked[b].sum()) > 0
        assert (o.logits - ref_logits[b]).abs().max() <= 1e-5


def test_auto_layers_scale_without_collisions_and_leave_a_layer_after_review():
    from hallufix_contrast.method import Config, resolve_layers

    assert resolve_layers(Config(), 32) == ([1, 3, 7, 10, 11, 12], 27, 28)  # the LLaVA preset
    fusion, post, review = resolve_layers(Config(), 28)
    assert fusion == [1, 3, 6, 9, 10, 11]  # the Qwen presets' set: paper layers 12 and 13 stay apart
    assert (post, review) == (24, 25)
    for L in (4, 6, 8, 12, 16):
        fusion, post, review = resolve_layers(Config(), L)
        assert max(fusion) < post < review <= L - 2, L
    assert resolve_layers(Config(), 8) == ([0, 1, 2, 3], 5, 6)  # the built-in model


def test_noop_settings_declare_nothing():
    s = tiny_session("llava", num_layers=8)
    for ovr in (["scale=1"], ["quantile=0"]):
        assert s.start(["contrast"], {"contrast": OVR[:4] + ovr}).declarations() == {}


def test_crop_box_finds_planted_region():
    from hallufix_contrast.method import crop_box, pixel_box

    grid = (6, 6)
    v = np.zeros(36)
    for r, c in ((1, 3), (1, 4), (2, 3), (2, 4)):
        v[r * 6 + c] = 1.0
    v[5 * 6 + 0] = 0.4  # a smaller, separate blob
    cells = crop_box(v, grid, 0.8)
    assert cells == (1, 3, 3, 5)
    idx = (np.arange(60)[:, None] * 6 // 60) * 6 + (np.arange(60)[None, :] * 6 // 60)
    box = pixel_box(idx, cells, grid, margin=0.0, min_side=0.0)
    assert box == (30, 10, 50, 30)
    wide = pixel_box(idx, cells, grid, margin=0.1, min_side=0.5)
    assert wide[2] - wide[0] >= 30 and wide[3] - wide[1] >= 30 and 0 <= wide[0] and wide[2] <= 60


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_crop_variant_feeds_a_second_image(family):
    s = tiny_session(family, num_layers=8)
    img = tiny_images(1, size=112)[0]
    run = s.start(["contrast"], {"contrast": OVR[1:4] + ["variant=crop"]})
    out = run.generate([img], ["is there a cat ?"], max_new_tokens=2)[0]
    d = out.diagnostics["contrast"]
    x0, y0, x1, y1 = d["box"]
    assert 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 112 and d["pre_layer"] in FUSION
    assert s.info.family != "instructblip"


@pytest.mark.parametrize("mode", ["attn", "kv", "residual"])
def test_matches_eager_steps_on_a_mixed_size_qwen_batch(mode):
    """Four image sizes in one left-padded Qwen2.5-VL batch: maps, Hellinger choice and quantile per row over its
    own visual tokens."""
    s = tiny_session("qwen2.5-vl", num_layers=8)
    images, qs = tiny_images(4, mixed=True), list(QUESTIONS[:4])
    layout = layout_of(s, images, qs)
    assert len(set(layout.visual.sum(1).tolist())) == 4 and not layout.valid.all()
    outs = s.start(["contrast"], {"contrast": OVR + [f"mode={mode}"]}).generate(
        images, qs, max_new_tokens=3, min_new_tokens=3, output_logits=True)
    ref, ref_logits = _reference(s, images, qs, mode)
    for b, o in enumerate(outs):
        d = o.diagnostics["contrast"]
        assert d["pre_layer"] == ref.chosen[b]
        assert d["suppressed_tokens"] == int(ref.masked[b].sum()) > 0
        assert (o.logits - ref_logits[b]).abs().max() <= 1e-5


def test_crop_variant_on_a_mixed_size_qwen_batch_equals_one_at_a_time():
    """The crop is a second image per row: mixed sizes and two-image rows, batched == one at a time."""
    s = tiny_session("qwen2.5-vl", num_layers=8)
    images, qs = tiny_images(4, mixed=True), list(QUESTIONS[:4])
    kw = dict(max_new_tokens=3, min_new_tokens=3, output_logits=True)
    run = s.start(["contrast", "clva"], {"contrast": OVR[1:4] + ["variant=crop"], "clva": ["pos_layer=1"]})
    outs = run.generate(images, qs, **kw)
    for b, o in enumerate(outs):
        one = run.generate([images[b]], [qs[b]], **kw)[0]
        assert o.diagnostics["contrast"]["box"] == one.diagnostics["contrast"]["box"]
        x0, y0, x1, y1 = o.diagnostics["contrast"]["box"]
        assert 0 <= x0 < x1 <= images[b].width and 0 <= y0 < y1 <= images[b].height
        assert torch.equal(o.token_ids, one.token_ids) and (o.logits - one.logits).abs().max() <= 1e-4


class TestContrastContract(MethodContract):
    method = "contrast"

    #: two units of the dtype's relative resolution (8 / 11 significant bits)
    CROP_TIE = {"bfloat16": 2 ** -7, "float16": 2 ** -10}

    def decision_tied(self, batched, single, dtype):
        """The crop variant's cells (cells at or above a quantile of the contrast map): in half precision a
        batched row and its single run may select different cells only where a cell sits at the quantile within
        rounding (``cells_gap``, crop_decision_gap); such a row's crop, and so its answer, may then differ."""
        b, s = batched.diagnostics.get("contrast", {}), single.diagnostics.get("contrast", {})
        if b.get("cells") == s.get("cells"):
            return False
        gaps = [g for g in (b["cells_gap"], s["cells_gap"]) if g is not None]  # None: that run selected nothing
        assert gaps, f"contrast: batched cells {b['cells']}, single {s['cells']}, neither run selected cells"
        gap = min(gaps)
        assert gap <= self.CROP_TIE[dtype], (f"contrast: batched cells {b['cells']}, single {s['cells']}, with a "
                                             f"decision gap of {gap:.3g} > {self.CROP_TIE[dtype]:.3g}: not a tie")
        return True
    # tiny models have 4 layers, so the family presets' layers (LLaVA 1,3,7,...) are replaced in both settings
    noop = ["variant=review", "fusion_layers=0-1", "post_layer=2", "review_layer=3", "scale=1"]
    active = ["variant=review", "fusion_layers=0-1", "post_layer=2", "review_layer=3", "quantile=0.3"]


def test_crop_decision_gap_measures_the_distance_to_the_quantile():
    from hallufix_contrast.method import crop_decision_gap

    values = np.array([0.1, 0.2, 0.3, 0.4])
    thr = np.quantile(values, 0.8)  # 0.34
    assert crop_decision_gap(values, 0.8) == pytest.approx(abs(0.3 - thr) / thr)
    assert crop_decision_gap(np.array([0.5, 0.5, 0.5, 0.5]), 0.8) == 0.0  # every cell at the quantile: a tie
    assert crop_decision_gap(np.array([-1.0, 0.0, -2.0, 0.0]), 0.8) is None  # no positive cell: no selection
    assert crop_decision_gap(np.array([0.0, 0.0, 0.0, 0.0, 0.5, 2.0]), 0.5) == pytest.approx(0.25)  # thr 0
