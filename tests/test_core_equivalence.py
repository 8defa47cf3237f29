"""The interception layer against independent eager references, on all four tiny families.

The reference is a plain eager attention function registered with transformers (full softmax over every row),
written here from the definitions, with no hallufix code in it.
"""
from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import repeat_kv

from hallufix import hookimpl
from hallufix import points as P
from hallufix.testing import HookRecorder
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix.testing.reference import generate_with_attention

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
W = 3.0
BIAS_LAYERS = (1, 2)


class ReferenceAttention:
    """Eager attention: softmax over all keys; optionally multiply the visual columns of text rows by ``w`` in
    ``layers`` and renormalise; records the probabilities of every layer."""

    def __init__(self, vis_mask, text_mask, w=1.0, layers=()):
        self.vis, self.text, self.w, self.layers = vis_mask, text_mask, w, set(layers)
        self.probs: list[tuple[int, torch.Tensor]] = []

    def __call__(self, module, q, k, v, mask, scaling=None, dropout=0.0, **kw):
        k, v = repeat_kv(k, module.num_key_value_groups), repeat_kv(v, module.num_key_value_groups)
        s = (q @ k.transpose(-1, -2)) * scaling
        if mask is not None:
            s = s + mask[:, :, :, : k.shape[2]]
        a = torch.softmax(s.float(), -1)
        q_len, kv_len = q.shape[2], k.shape[2]
        if module.layer_idx in self.layers:
            P_ = self.vis.shape[1]
            rows = torch.arange(kv_len - q_len, kv_len)
            text = torch.stack([torch.tensor([bool(self.text[b, r]) if r < P_ else True for r in rows])
                                for b in range(q.shape[0])])
            cols = torch.zeros(q.shape[0], kv_len, dtype=torch.bool)
            cols[:, :P_] = self.vis
            wmat = torch.where(text[:, None, :, None] & cols[:, None, None, :], self.w, 1.0)
            a = a * wmat
            a = a / a.sum(-1, keepdim=True)
        self.probs.append((module.layer_idx, a))
        return (a.to(v.dtype) @ v).transpose(1, 2).contiguous(), a


def run_reference(session, images, questions, ref, n_new=4):
    """Logits ``(B, T, V)`` of greedy generation under the eager reference ``ref``."""
    logits, _, _ = generate_with_attention(session, images, questions, ref, n_new)
    return logits


class VisualBias:
    """Bias plugin: log(w) on the visual key columns of text rows at ``layers``."""

    name = "test-bias"

    def __init__(self, layers, w, per_forward=False, name="test-bias"):
        self.layers, self.w, self.per_forward, self.name = layers, w, per_forward, name
        self.calls = 0

    @hookimpl
    def hallufix_configure(self, model):
        return P.attn_bias(self.layers, per_forward=self.per_forward)

    @hookimpl
    def hallufix_attn_bias(self, event):
        self.calls += 1
        event.add(torch.where(event.visual_keys, torch.log(torch.tensor(self.w)), 0.0))


def _batch(n, mixed=False):
    qs = [QUESTIONS[i % len(QUESTIONS)] + " please" * i for i in range(n)]  # different lengths
    return tiny_images(n, mixed=mixed), qs


@pytest.mark.parametrize("family", FAMILIES)
def test_no_plugins_equals_plain_generate(family):
    s = tiny_session(family)
    images, qs = _batch(2)
    outs = s.start([]).generate(images, qs, max_new_tokens=5, min_new_tokens=5, output_logits=True)
    inputs = s.adapter.inputs(s.processor, [[im] for im in images], qs, s.device)
    with torch.inference_mode():
        plain = s.model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                                 return_dict_in_generate=True, output_logits=True)
    logits = torch.stack(plain.logits, 1)
    for i, o in enumerate(outs):
        assert torch.equal(o.token_ids, s.adapter.new_tokens(plain.sequences, inputs)[i])
        assert (o.logits - logits[i]).abs().max() <= 1e-6


@pytest.mark.parametrize("w", [W, 0.0])
@pytest.mark.parametrize("family", FAMILIES)
def test_bias_matches_eager_reweighting_on_left_padded_batch(family, w):
    """``w = 0`` is a ``-inf`` bias on every visual key (an image-free branch); the eager reference zeroes those
    columns and renormalises."""
    s = tiny_session(family)
    images, qs = _batch(2)
    run = s.start([VisualBias(BIAS_LAYERS, w)])
    outs = run.generate(images, qs, max_new_tokens=4, min_new_tokens=4, output_logits=True)
    inputs = s.adapter.inputs(s.processor, [[im] for im in images], qs, s.device)
    assert inputs["attention_mask"].min() == 0, "the batch must be left padded"
    layout = s.adapter.layout(s.model, inputs, [[im] for im in images])
    ref = ReferenceAttention(layout.visual, layout.text, w, BIAS_LAYERS)
    ref_logits = run_reference(s, images, qs, ref)
    for i, o in enumerate(outs):
        assert torch.equal(o.token_ids, ref_logits[i].argmax(-1))
        assert (o.logits - ref_logits[i]).abs().max() <= 1e-5
    # the intervention is real: the baseline differs
    base = s.start([]).generate(images, qs, max_new_tokens=4, min_new_tokens=4, output_logits=True)
    assert (base[0].logits - outs[0].logits).abs().max() > 1e-3
    # layers without hooks ran plain SDPA; biased layers kept SDPA for unbiased rows at prefill
    paths = run.hook_stats["paths"]
    assert paths.get("0:sdpa", 0) >= 1 and "0:rows" not in paths
    assert paths.get("1:sdpa+rows", 0) == 1 and paths.get("1:rows", 0) == 3  # prefill, then 3 decode steps


@pytest.mark.parametrize("w", [W, 0.0])
@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_bias_and_probes_match_eager_on_a_mixed_size_batch(family, w):
    """Four image sizes in one left-padded Qwen batch (four visual-token counts): the bias and the probe rows
    equal the eager reference."""
    s = tiny_session(family)
    images, qs = _batch(4, mixed=True)
    rec = HookRecorder(P.attn_probs([2], rows="text"), keep=True)
    outs = s.start([VisualBias(BIAS_LAYERS, w), rec]).generate(images, qs, max_new_tokens=3, min_new_tokens=3,
                                                               output_logits=True)
    inputs = s.adapter.inputs(s.processor, [[im] for im in images], qs, s.device)
    layout = s.adapter.layout(s.model, inputs, [[im] for im in images])
    assert len(set(layout.visual.sum(1).tolist())) == 4 and inputs["attention_mask"].min() == 0
    ref = ReferenceAttention(layout.visual, layout.text, w, BIAS_LAYERS)
    ref_logits = run_reference(s, images, qs, ref, n_new=3)
    for i, o in enumerate(outs):
        assert torch.isfinite(o.logits).all()
        assert (o.logits - ref_logits[i]).abs().max() <= 1e-5
    want = [a for layer, a in ref.probs if layer == 2]
    text_rows = layout.text.any(0).nonzero().squeeze(1)
    for step, got in enumerate(rec.values):
        exp = want[step][:, :, text_rows] if step == 0 else want[step]
        assert (got - exp).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_per_forward_bias_is_computed_once_per_forward_and_applied_at_every_layer(family):
    s = tiny_session(family)
    images, qs = _batch(2)
    shared = VisualBias(BIAS_LAYERS, W, per_forward=True)
    run = s.start([shared])
    outs = run.generate(images, qs, max_new_tokens=4, min_new_tokens=4, output_logits=True)
    assert shared.calls == 4  # prefill + 3 decode steps, not once per layer
    assert all(run.hook_stats["fired"][f"attn_bias.{i}"] == 4 for i in BIAS_LAYERS)
    inputs = s.adapter.inputs(s.processor, [[im] for im in images], qs, s.device)
    layout = s.adapter.layout(s.model, inputs, [[im] for im in images])
    ref_logits = run_reference(s, images, qs, ReferenceAttention(layout.visual, layout.text, W, BIAS_LAYERS))
    for i, o in enumerate(outs):
        assert (o.logits - ref_logits[i]).abs().max() <= 1e-5
    # stacked with a per-layer bias on one of its layers: the per-forward method is still called once per forward
    # (its terms come from its own per-forward cache entry), and the sum of both biases equals the reference with
    # the product of the weights
    per_forward, per_layer = VisualBias(BIAS_LAYERS, W, per_forward=True), VisualBias([2], 2.0, name="test-bias-2")
    outs2 = s.start([per_forward, per_layer]).generate(images, qs, max_new_tokens=4, min_new_tokens=4,
                                                       output_logits=True)
    assert per_forward.calls == 4 and per_layer.calls == 4  # once per forward each: layer 2 calls only per_layer
    ref = ReferenceAttention(layout.visual, layout.text, W, [1])
    ref2 = _TwoWeights(ref, {2: W * 2.0})
    ref2_logits = run_reference(s, images, qs, ref2)
    for i, o in enumerate(outs2):
        assert (o.logits - ref2_logits[i]).abs().max() <= 1e-5


class _TwoWeights:
    """A :class:`ReferenceAttention` whose weight differs per layer (``{layer: w}`` overrides)."""

    def __init__(self, base, weights):
        self.base, self.weights = base, weights

    def __call__(self, module, *args, **kw):
        w = self.weights.get(module.layer_idx)
        if w is None:
            return self.base(module, *args, **kw)
        old_w, old_layers = self.base.w, self.base.layers
        self.base.w, self.base.layers = w, {module.layer_idx}
        try:
            return self.base(module, *args, **kw)
        finally:
            self.base.w, self.base.layers = old_w, old_layers


@pytest.mark.parametrize("family", FAMILIES)
def test_probe_rows_equal_eager_probabilities(family):
    s = tiny_session(family)
    images, qs = _batch(2)
    rec = HookRecorder(P.attn_probs([0, 2], rows="text"), keep=True)
    run = s.start([rec])
    run.generate(images, qs, max_new_tokens=3, min_new_tokens=3)
    inputs = s.adapter.inputs(s.processor, [[im] for im in images], qs, s.device)
    layout = s.adapter.layout(s.model, inputs, [[im] for im in images])
    ref = ReferenceAttention(layout.visual, layout.text)
    run_reference(s, images, qs, ref, n_new=3)
    ref_by_layer = {}
    for layer, a in ref.probs:
        ref_by_layer.setdefault(layer, []).append(a)
    steps = {0: 0, 2: 0}
    for (name, phase, step, shape), got in zip(rec.calls, rec.values):
        layer = P.parse_name(name)[1]
        want = ref_by_layer[layer][step]
        if phase == "prefill":
            text_rows = layout.text.any(0).nonzero().squeeze(1)
            want = want[:, :, text_rows]
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-5
        steps[layer] += 1
    assert steps == {0: 3, 2: 3}
    paths = run.hook_stats["paths"]
    assert "1:sdpa" in paths and not any(k.startswith("1:") and k != "1:sdpa" for k in paths)
    assert paths.get("0:sdpa", 0) == 3  # probes read rows; the layer output stays the fused one


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_four_equals_one_at_a_time(family, mixed):
    """``mixed``: four image sizes and modes (Qwen: four visual-token counts in one batch)."""
    s = tiny_session(family)
    images, qs = _batch(4, mixed)
    rec = HookRecorder(P.attn_probs([1], rows="last", phases={"prefill"}), keep=True)
    outs = s.start([VisualBias([2], 2.0), rec]).generate(images, qs, max_new_tokens=4, min_new_tokens=4,
                                                         output_logits=True)
    batched_map = rec.values[0]
    inputs = s.adapter.inputs(s.processor, [[im] for im in images], qs, s.device)
    valid = inputs["attention_mask"].bool()  # padding sits left, or (InstructBLIP) between the queries and text
    for i in range(4):
        r1 = HookRecorder(P.attn_probs([1], rows="last", phases={"prefill"}), keep=True)
        one = s.start([VisualBias([2], 2.0), r1]).generate([images[i]], [qs[i]], max_new_tokens=4,
                                                           min_new_tokens=4, output_logits=True)[0]
        assert torch.equal(one.token_ids, outs[i].token_ids)
        assert (one.logits - outs[i].logits).abs().max() <= 1e-4
        # the captured last-row map over the row's own (non-pad) keys equals the single-prompt one
        got = batched_map[i, :, 0][:, valid[i]]
        assert got.shape == r1.values[0][0, :, 0].shape
        assert (got - r1.values[0][0, :, 0]).abs().max() <= 1e-5
