"""CLVA against an independent, slow, eager implementation of its Eq. 1-11 (written here from the paper)."""
from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import repeat_kv

from hallufix import points as P
from hallufix.config import ConfigError
from hallufix.testing import HookRecorder, MethodContract
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix.testing.reference import generate_with_attention, layout_of

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
SETTING = dict(alpha=14.0, beta=0.9, tau=1.0, lam=0.5, neg=0, pos=1, drift=[2, 3, 4, 5, 6, 7],
               renorm=True, eps_rel=False, phi_sample=False, map_sample=False)
#: every value of CLVA's estimator switches other than the defaults: (overrides, reference setting changes)
SWITCHES = {"renormalise_map=false": dict(renorm=False), "eps_scale=relative": dict(eps_rel=True),
            "eps_scale=relative,renormalise_map=false": dict(eps_rel=True, renorm=False),
            "phi_std=sample": dict(phi_sample=True), "map_std=sample": dict(map_sample=True)}
OVERRIDES = ["tau=1.0", "lambda_vis=0.5", "pos_layer=1"]


class EagerCLVA:
    """Eager attention with the paper's CLVA applied literally: full softmax, Phi averaged over every text row seen
    so far (Eq. 1), head split by mean ± lambda*std (Eq. 2-3, population or sample std), anchor maps from the last
    row (Eq. 4), optionally rescaled to sum 1, z-score masks (Eq. 8-9; population or sample std, absolute or
    relative eps), multiplicative re-weighting of text rows' visual columns then
    renormalisation over all keys (Eq. 10-11)."""

    def __init__(self, vis, text, s, dynamic=True):
        self.vis, self.text, self.s, self.dynamic = vis, text, s, dynamic
        self.phi_sum, self.phi_n, self.z, self.calls = {}, {}, {}, 0
        self.drift_probs: list[tuple[int, torch.Tensor]] = []

    def roles(self, B, q_len, kv_len):
        P_ = self.vis.shape[1]
        rows = range(kv_len - q_len, kv_len)
        text = torch.tensor([[bool(self.text[b, r]) if r < P_ else True for r in rows] for b in range(B)])
        cols = torch.zeros(B, kv_len, dtype=torch.bool)
        cols[:, :P_] = self.vis
        return text, cols

    def __call__(self, module, q, k, v, mask, scaling=None, dropout=0.0, **kw):
        k, v = repeat_kv(k, module.num_key_value_groups), repeat_kv(v, module.num_key_value_groups)
        scores = (q @ k.transpose(-1, -2)) * scaling
        if mask is not None:
            scores = scores + mask[:, :, :, : k.shape[2]]
        A = torch.softmax(scores.float(), -1)
        B, H, q_len, kv_len = A.shape
        layer = module.layer_idx
        text, cols = self.roles(B, q_len, kv_len)
        prefill = kv_len == q_len
        s = self.s
        if layer in (s["neg"], s["pos"]) and (self.dynamic or prefill):
            for b in range(B):
                key = (layer, b)
                for i in range(q_len):
                    if text[b, i]:
                        mass = torch.stack([A[b, h, i][cols[b]].sum() for h in range(H)])
                        self.phi_sum[key] = self.phi_sum.get(key, torch.zeros(H)) + mass
                        self.phi_n[key] = self.phi_n.get(key, 0) + 1
                phi = self.phi_sum[key] / self.phi_n[key]
                mu, sd = phi.mean(), phi.std(unbiased=s["phi_sample"])
                for kind in ("pos", "neg"):
                    if layer != s[kind]:
                        continue
                    sel = [h for h in range(H) if (phi[h] > mu + s["lam"] * sd if kind == "pos"
                                                   else phi[h] < mu - s["lam"] * sd)]
                    if not sel:
                        sel = [int(phi.argmax() if kind == "pos" else phi.argmin())]
                    M = torch.stack([A[b, h, q_len - 1][cols[b]] for h in sel]).mean(0)
                    if s["renorm"]:
                        M = M / M.sum()
                    eps = 1e-6 * M.mean() if s["eps_rel"] else 1e-6
                    zs = (M - M.mean()) / (M.std(unbiased=s["map_sample"]) + eps)
                    self.z[(kind, b)] = zs > s["tau"]
        if layer in s["drift"]:
            A = A.clone()
            for b in range(B):
                w = torch.ones(int(cols[b].sum()))
                w = w + s["alpha"] * self.z[("pos", b)].float() - s["beta"] * self.z[("neg", b)].float()
                w = w.clamp(min=0)
                for i in range(q_len):
                    if text[b, i]:
                        row = A[b, :, i].clone()
                        row[:, cols[b]] = row[:, cols[b]] * w
                        A[b, :, i] = row / row.sum(-1, keepdim=True)
            self.drift_probs.append((layer, A))
        return (A.to(v.dtype) @ v).transpose(1, 2).contiguous(), A


def _reference(s, images, qs, dynamic, n_new, setting=SETTING):
    layout = layout_of(s, images, qs)
    ref = EagerCLVA(layout.visual, layout.text, setting, dynamic)
    logits, _, layout = generate_with_attention(s, images, qs, ref, n_new)
    return ref, logits, layout


@pytest.mark.parametrize("anchors", ["dynamic", "prefill"])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_eager_paper_equations(family, anchors):
    s = tiny_session(family, num_layers=8)
    images, qs = tiny_images(2), ["is there a cat in the image ?", "what colour is the large object ?"]
    rec = HookRecorder(P.attn_probs(SETTING["drift"], rows="text"), keep=True)
    run = s.start(["clva", rec], {"clva": OVERRIDES + [f"anchors={anchors}"]})
    outs = run.generate(images, qs, max_new_tokens=3, min_new_tokens=3, output_logits=True)
    ref, ref_logits, layout = _reference(s, images, qs, anchors == "dynamic", 3)
    for i, o in enumerate(outs):
        assert (o.logits - ref_logits[i]).abs().max() <= 1e-5
    # drift-layer probabilities of the text rows, prefill and every decode step
    text_rows = layout.text.any(0).nonzero().squeeze(1)
    assert len(rec.values) == len(ref.drift_probs)
    for got, (layer, want) in zip(rec.values, ref.drift_probs):
        want = want[:, :, text_rows] if want.shape[2] > 1 else want
        assert (got - want).abs().max() <= 1e-5
    # the method really acted: anchors fired and logits moved
    base = s.start([]).generate(images, qs, max_new_tokens=3, min_new_tokens=3, output_logits=True)
    assert (base[0].logits - outs[0].logits).abs().max() > 1e-4
    assert outs[0].diagnostics["clva"]["prefill"]["positive_anchors"] >= 1


@pytest.mark.parametrize("switch", sorted(SWITCHES))
@pytest.mark.parametrize("family", FAMILIES)
def test_estimator_switches_match_eager(family, switch):
    s = tiny_session(family, num_layers=8)
    images, qs = tiny_images(2), ["is there a cat in the image ?", "what colour is the large object ?"]
    outs = s.start(["clva"], {"clva": OVERRIDES + switch.split(",")}).generate(
        images, qs, max_new_tokens=3, min_new_tokens=3, output_logits=True)
    ref, ref_logits, _ = _reference(s, images, qs, True, 3, {**SETTING, **SWITCHES[switch]})
    for i, o in enumerate(outs):
        assert (o.logits - ref_logits[i]).abs().max() <= 1e-5


def test_a_tiny_negative_map_gets_anchors_only_when_scale_free():
    """Layer-0 insensitive heads with ~3e-7 of their mass on the image (the built-in model's case): an absolute
    eps of 1e-6 swamps sigma and no token is an outlier; renormalising M, or a relative eps, restores Eq. 8."""
    from hallufix_clva.method import Config, anchor_mask

    g = torch.Generator().manual_seed(0)
    m = torch.rand(3, 64, generator=g) * 1e-8
    m[:, 5] = 2e-7  # one clear outlier per row
    assert not anchor_mask(m, Config(renormalise_map=False)).any()
    for cfg in (Config(), Config(renormalise_map=False, eps_scale="relative")):
        got = anchor_mask(m, cfg)
        assert got[:, 5].all() and int(got.sum()) == 3
    assert torch.equal(anchor_mask(m * 1e5, Config()), anchor_mask(m, Config()))  # scale-free


@pytest.mark.parametrize("anchors", ["dynamic", "prefill"])
def test_matches_eager_on_a_mixed_size_qwen_batch(anchors):
    """Four image sizes in one left-padded Qwen2.5-VL batch: every row its own visual-token count, anchors and
    z-scores over that row's own tokens."""
    s = tiny_session("qwen2.5-vl", num_layers=8)
    images, qs = tiny_images(4, mixed=True), list(QUESTIONS[:4])
    layout = layout_of(s, images, qs)
    assert len(set(layout.visual.sum(1).tolist())) == 4 and not layout.valid.all()
    outs = s.start(["clva"], {"clva": OVERRIDES + [f"anchors={anchors}", "record_maps=true"]}).generate(
        images, qs, max_new_tokens=3, min_new_tokens=3, output_logits=True)
    ref, ref_logits, layout = _reference(s, images, qs, anchors == "dynamic", 3)
    for i, o in enumerate(outs):
        assert (o.logits - ref_logits[i]).abs().max() <= 1e-5
        d = o.diagnostics["clva"]
        assert len(d["positive_map"]) == int(layout.visual[i].sum())  # the row's own tokens, no padded slot
        assert d["last_step"]["positive_anchors"] == int(ref.z[("pos", i)].sum())
        assert d["last_step"]["negative_anchors"] == int(ref.z[("neg", i)].sum())
    assert sum(o.diagnostics["clva"]["prefill"]["positive_anchors"] for o in outs) >= 4


@pytest.mark.parametrize("overrides", [["alpha=0", "beta=0"], ["use_pos=false", "use_neg=false"]])
def test_noop_settings_equal_baseline(overrides):
    s = tiny_session("llava", num_layers=8)
    base = s.start([]).generate(tiny_images(2), ["hi", "is there a cat ?"], max_new_tokens=3, output_logits=True)
    run = s.start(["clva"], {"clva": overrides})
    assert run.declarations() == {}
    got = run.generate(tiny_images(2), ["hi", "is there a cat ?"], max_new_tokens=3, output_logits=True)
    for a, b in zip(base, got):
        assert torch.equal(a.logits, b.logits)


def test_layers_resolve_per_depth_and_bad_config_is_named():
    s = tiny_session("llava", num_layers=8)
    names = s.start(["clva"]).declarations()["clva"]
    assert "attn_probs.1" in names and "attn_probs.0" in names  # pos auto = 8/2 - 3
    assert "attn_bias.2" in names and "attn_bias.7" in names
    with pytest.raises(ConfigError, match="Did you mean 'alpha'"):
        s.start(["clva"], {"clva": ["alpah=3"]})
    with pytest.raises(ValueError, match="do not come after the anchor layers"):
        s.start(["clva"], {"clva": ["apply_layers=0-3"]})


class TestCLVAContract(MethodContract):
    method = "clva"
    noop = ["alpha=0", "beta=0"]
    active = OVERRIDES
