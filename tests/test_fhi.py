"""FHI-CCR against an independent eager implementation of Eq. 7-10 (explicit per-head scaling before o_proj)."""
from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import repeat_kv

from hallufix.testing import MethodContract
from hallufix.testing.leaks import hook_snapshot
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix.testing.reference import generate_with_attention, layout_of

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")


class EagerFHI:
    """Eager attention; at every forward (or only at prefill when frozen) each head's visual share of the last
    query row decides its class; the head's output is multiplied by its gain before o_proj."""

    def __init__(self, vis, cfg, frozen):
        self.vis, self.cfg, self.frozen = vis, cfg, frozen
        self.gains: dict[int, torch.Tensor] = {}
        self.selected = 0

    def __call__(self, module, q, k, v, mask, scaling=None, dropout=0.0, **kw):
        k, v = repeat_kv(k, module.num_key_value_groups), repeat_kv(v, module.num_key_value_groups)
        s = (q @ k.transpose(-1, -2)) * scaling
        if mask is not None:
            s = s + mask[:, :, :, : k.shape[2]]
        A = torch.softmax(s.float(), -1)
        out = (A.to(v.dtype) @ v)  # (B, H, q, D)
        B, H, q_len, kv_len = A.shape
        layer, c = module.layer_idx, self.cfg
        if not self.frozen or q_len == kv_len:
            cols = torch.zeros(B, kv_len, dtype=torch.bool)
            cols[:, : self.vis.shape[1]] = self.vis
            g = torch.ones(B, H)
            for b in range(B):
                for h in range(H):
                    sv = A[b, h, q_len - 1][cols[b]].sum()
                    if layer <= c["perc_max"] and sv >= c["tau_perc"]:
                        g[b, h] = c["g_perc"]
                        self.selected += 1
                    elif layer >= c["reas_min"] and sv <= c["tau_reas"]:
                        g[b, h] = c["g_reas"]
                        self.selected += 1
            self.gains[layer] = g
        out = out * self.gains[layer][:, :, None, None].to(out.dtype)
        return out.transpose(1, 2).contiguous(), A


QS = ["is there a cat in the image ?", "how many dogs are there ?"]


def _settings(s):
    """Thresholds from this model's own S_v distribution on the test prompts, so both classes are non-empty on
    random weights."""
    from hallufix_fhi.method import FHI

    cal = FHI.calibrate(s, tiny_images(2), QS, fraction=0.3, perc_max_layer=5, reas_min_layer=2)
    return {"perc_max": 5, "reas_min": 2, "tau_perc": cal["tau_perc"], "tau_reas": cal["tau_reas"],
            "g_perc": 1.5, "g_reas": 1.8}


def _overrides(c, query_row="last", fold=False):
    return [f"perc_max_layer={c['perc_max']}", f"reas_min_layer={c['reas_min']}", f"tau_perc={c['tau_perc']!r}",
            f"tau_reas={c['tau_reas']!r}", f"g_perc={c['g_perc']}", f"g_reas={c['g_reas']}",
            f"query_row={query_row}", f"fold={str(fold).lower()}"]


def _eager(s, images, qs, c, frozen, n_new=3):
    ref = EagerFHI(layout_of(s, images, qs).visual, c, frozen)
    logits, _, _ = generate_with_attention(s, images, qs, ref, n_new)
    return ref, logits


@pytest.mark.parametrize("query_row", ["last", "prompt_last"])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_eager_per_head_scaling(family, query_row):
    s = tiny_session(family, num_layers=8)
    c = _settings(s)
    images, qs = tiny_images(2), QS
    outs = s.start(["fhi"], {"fhi": _overrides(c, query_row)}).generate(images, qs, max_new_tokens=3,
                                                                         min_new_tokens=3, output_logits=True)
    ref, ref_logits = _eager(s, images, qs, c, frozen=query_row != "last")
    assert ref.selected > 0
    assert sum(o.diagnostics["fhi"]["n_perception"] for o in outs) > 0
    assert sum(o.diagnostics["fhi"]["n_reasoning"] for o in outs) > 0
    for i, o in enumerate(outs):
        assert (o.logits - ref_logits[i]).abs().max() <= 1e-5


@pytest.mark.parametrize("query_row", ["last", "prompt_last", "mean"])
def test_matches_eager_on_a_mixed_size_qwen_batch(query_row):
    """Four image sizes (a different visual-token count per row), left padded: per-row S_v over each row's own
    visual keys."""
    s = tiny_session("qwen2.5-vl", num_layers=8)
    c = _settings(s)
    images, qs = tiny_images(4, mixed=True), list(QUESTIONS[:4])
    layout = layout_of(s, images, qs)
    assert len(set(layout.visual.sum(1).tolist())) == 4 and not layout.valid.all()
    outs = s.start(["fhi"], {"fhi": _overrides(c, query_row)}).generate(images, qs, max_new_tokens=3,
                                                                         min_new_tokens=3, output_logits=True)
    if query_row == "mean":  # the eager reference classifies on the last row; the mean row: batched == single
        for i, o in enumerate(outs):
            one = s.start(["fhi"], {"fhi": _overrides(c, query_row)}).generate(
                [images[i]], [qs[i]], max_new_tokens=3, min_new_tokens=3, output_logits=True)[0]
            assert (o.logits - one.logits).abs().max() <= 1e-5
            assert o.diagnostics["fhi"]["selected_heads"] == one.diagnostics["fhi"]["selected_heads"]
        return
    ref, ref_logits = _eager(s, images, qs, c, frozen=query_row != "last")
    assert ref.selected > 0
    for i, o in enumerate(outs):
        assert (o.logits - ref_logits[i]).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_static_fold_equals_frozen_scaling_and_restores_weights(family):
    s = tiny_session(family, num_layers=8)
    c = _settings(s)
    before = hook_snapshot(s.model)
    images, qs = tiny_images(1), QS[:1]
    run = s.start(["fhi"], {"fhi": _overrides(c, "prompt_last", fold=True)})
    folded = run.generate(images, qs, max_new_tokens=4, min_new_tokens=4, output_logits=True)[0]
    scaled = s.start(["fhi"], {"fhi": _overrides(c, "prompt_last")}).generate(
        images, qs, max_new_tokens=4, min_new_tokens=4, output_logits=True)[0]
    folded_layers = folded.diagnostics["fhi"]["folded_layers"]
    assert folded_layers
    assert (folded.logits - scaled.logits).abs().max() <= 1e-5
    # a folded layer's decode steps take the plain kernel: its heads hook ran at prefill only (1 of 4 forwards)
    fired = run.hook_stats["fired"]
    assert all(fired[f"lm.layers.{layer}.attn.heads"] == 1 for layer in folded_layers), fired
    assert hook_snapshot(s.model) == before  # o_proj weights restored bit-exactly


def test_unit_gains_equal_baseline_and_bad_config():
    s = tiny_session("llava")
    run = s.start(["fhi"], {"fhi": ["g_perc=1", "g_reas=1"]})
    assert run.declarations() == {}
    from hallufix.config import ConfigError

    with pytest.raises(ConfigError, match="tau_reas"):
        s.start(["fhi"], {"fhi": ["tau_reas=0.5", "tau_perc=0.2"]})
    with pytest.raises(ConfigError, match="fold needs frozen"):
        s.start(["fhi"], {"fhi": ["fold=true"]})


class TestFHIContract(MethodContract):
    method = "fhi"
    noop = ["g_perc=1", "g_reas=1"]
    active = ["tau_perc=0.05", "tau_reas=0.04", "g_perc=1.5", "g_reas=1.8"]
