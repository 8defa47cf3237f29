"""A ``-inf`` bias on every visual key (an image-free branch or ablation) in a left-padded batch: finite logits and
the one-at-a-time answers, on the built-in model and the tiny families, in float32 and bfloat16 (issue: the float
mask used to be built as ``mask + sel * bias`` with a 0/1 ``sel``, and ``0 * -inf`` is NaN in padding rows)."""
from __future__ import annotations

import random

import pytest
import torch

from hallufix import capture as C
from hallufix import hookimpl
from hallufix import points as P
from hallufix.builtin import builtin_model_available
from hallufix.testing import HookRecorder
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix.testing.real import BATCH_ATOL, assert_same_answers


class MaskVisual:
    """``-inf`` on every visual key for the text rows at ``layers`` (default all)."""

    name = "mask-visual"

    def __init__(self, layers=None):
        self.layers = layers

    @hookimpl
    def hallufix_configure(self, model):
        return P.attn_bias(range(model.num_layers) if self.layers is None else self.layers)

    @hookimpl
    def hallufix_attn_bias(self, event):
        event.add(torch.where(event.visual_keys, float("-inf"), 0.0))


def _check(session, images, questions, dtype, n_new=3):
    kw = dict(max_new_tokens=n_new, min_new_tokens=n_new, output_logits=True)
    rec = HookRecorder(P.attn_probs([1], rows="text", phases={"prefill"}), keep=True)
    batched = session.start([MaskVisual(), rec]).generate(images, questions, **kw)
    inputs = session.adapter.inputs(session.processor, [[im] for im in images], questions, session.device)
    assert inputs["attention_mask"].min() == 0, "the batch must be left padded"
    layout = session.adapter.layout(session.model, inputs, [[im] for im in images])
    probed = layout.text.any(0).nonzero().squeeze(1)  # the union of the rows' text rows
    mass = C.visual_mass(rec.values[0].float(), layout.visual)  # (B, H, R)
    assert float((mass * layout.text[:, None, probed]).max()) == 0.0  # each row's text rows see no image
    atol = 1e-4 if dtype == "float32" else BATCH_ATOL[dtype]
    if dtype == "bfloat16":
        # BATCH_ATOL is written for the tiny models' O(1) logits; the built-in model's reach ~20, where one unit in
        # the last place of bfloat16 (8 significant bits) is 0.125: allow 4 units at the logits' magnitude
        top = max(float(b.logits.float().abs().max()) for b in batched)
        atol = max(atol, 4 * 2.0 ** (int(torch.tensor(top).log2().floor()) - 7))
    for i, b in enumerate(batched):
        assert torch.isfinite(b.logits).all(), f"row {i}: {(~torch.isfinite(b.logits)).sum()} non-finite logits"
        one = session.start([MaskVisual()]).generate([images[i]], [questions[i]], **kw)[0]
        assert_same_answers(b, one, atol, where=f"row {i}: ")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", ["llava", "qwen2-vl", "qwen2.5-vl", "instructblip"])
def test_tiny_families(family, dtype):
    s = tiny_session(family, dtype=dtype)
    _check(s, tiny_images(4, mixed=True), list(QUESTIONS[:4]), dtype)


@pytest.mark.skipif(not builtin_model_available(), reason="no shipped built-in weights")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_builtin_model(dtype):
    import hallufix
    from hallufix.builtin.questions import fixed_questions
    from hallufix.builtin.world import render, sample_scene

    s = hallufix.load_model("builtin", dtype=dtype)
    rows = fixed_questions()
    picked = sorted(rows, key=lambda r: len(r["question"]))
    picked = [picked[0], picked[len(picked) // 3], picked[2 * len(picked) // 3], picked[-1]]  # different lengths
    images = [render(sample_scene(random.Random(r["scene_seed"]))) for r in picked]
    _check(s, images, [r["question"] for r in picked], dtype)


def test_finite_bias_rows_are_untouched_outside_their_selection():
    """The mask of rows a term does not select equals the causal/padding mask bit for bit (no ``0 * bias``)."""
    s = tiny_session("llava")
    images, qs = tiny_images(2), ["is there a cat ?", "what colour is the large object on the left side ?"]
    rec = HookRecorder(P.attn_probs([1], rows="all", phases={"prefill"}), keep=True)
    base = HookRecorder(P.attn_probs([1], rows="all", phases={"prefill"}), keep=True)
    s.start([MaskVisual([1]), rec]).generate(images, qs, max_new_tokens=1)
    s.start([base]).generate(images, qs, max_new_tokens=1)
    layout = s.adapter.layout(s.model, s.adapter.inputs(s.processor, [[im] for im in images], qs, s.device),
                              [[im] for im in images])
    untouched = ~layout.text  # (B, P): rows the bias does not apply to (padding, system, visual)
    got, want = rec.values[0], base.values[0]
    assert torch.isfinite(got).all()
    assert torch.equal(got.permute(0, 2, 1, 3)[untouched], want.permute(0, 2, 1, 3)[untouched])
