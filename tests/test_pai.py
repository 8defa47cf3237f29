"""PAI against an independent, slow, eager implementation written from the paper (Liu et al., ECCV 2024, Eq. 4-6)
and the official code's placement (row -1 of every forward, image columns, after the mask): each step a full
forward of the whole sequence without a KV cache, one row at a time, under an eager attention function that applies
``s + alpha |s|`` to the image columns of every row that was the last row of some forward of the cached generation
(the last prompt row and each generated token), and an image-free forward for the guidance."""
from __future__ import annotations

import math

import pytest
import torch
from transformers.integrations.sdpa_attention import repeat_kv

from hallufix import hookimpl, points
from hallufix.testing import MethodContract
from hallufix.testing.recorder import ScoresSpy
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix.testing.reference import attention_as

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
T = 4


class EagerPAI:
    """Eager attention; when ``on``, rows ``>= first_row`` of layers ``layers`` get ``s + alpha |s|`` on ``cols``."""

    def __init__(self, layers, alpha, cols, first_row):
        self.layers, self.alpha, self.cols, self.first_row, self.on = set(layers), alpha, cols, first_row, True

    def __call__(self, module, q, k, v, mask, scaling=None, dropout=0.0, **kw):
        k, v = repeat_kv(k, module.num_key_value_groups), repeat_kv(v, module.num_key_value_groups)
        s = (q.float() @ k.float().transpose(-1, -2)) * scaling
        if mask is not None:
            s = s + mask[:, :, :, : k.shape[2]].float()
        s = torch.maximum(s, torch.tensor(torch.finfo(torch.float32).min))
        if self.on and module.layer_idx in self.layers:
            kv = s.shape[-1]
            rows = torch.arange(s.shape[2])[:, None] >= self.first_row  # (q, 1)
            cols = torch.zeros(kv, dtype=torch.bool)
            cols[: self.cols.numel()] = self.cols
            sel = rows & cols[None, :]
            s = torch.where(sel, s + self.alpha * s.abs(), s)
        p = torch.softmax(s, -1)
        return (p.to(v.dtype) @ v).transpose(1, 2).contiguous(), p


def _forward(s, inputs, ids):
    kw = dict(inputs)
    P = inputs["input_ids"].shape[1]
    kw["input_ids"], kw["attention_mask"] = ids, torch.ones_like(ids)
    if "mm_token_type_ids" in kw:
        extra = torch.zeros(1, ids.shape[1] - P, dtype=kw["mm_token_type_ids"].dtype)
        kw["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], extra], 1)
    return s.model(**kw, use_cache=False).logits[:, -1].float()


def _text_only(s, ids):
    """The image-free prompt's last-position logits (the language model alone where the class needs pixels)."""
    if s.info.family == "instructblip":  # the class needs pixels; its language model alone takes text
        return s.model.language_model(input_ids=ids, use_cache=False).logits[:, -1].float()
    return s.model(input_ids=ids, use_cache=False).logits[:, -1].float()


def reference_pai(session, image, question, alpha=0.2, gamma=1.1, beta=0.1, layers=None, steps=T):
    s = session
    inputs = s.adapter.inputs(s.processor, [[image]], [question], "cpu")
    P = inputs["input_ids"].shape[1]
    cols = inputs["input_ids"][0] == s.info.image_token_id
    layers = range(s.info.num_layers) if layers is None else layers
    fn = EagerPAI(layers, alpha, cols, P - 1)
    tok = s.processor.tokenizer
    neg = tok([s.adapter.prompt(s.processor, question, 0)], return_tensors="pt")["input_ids"]
    eos = s.model.generation_config.eos_token_id
    ids, toks, scores = inputs["input_ids"], [], []
    with attention_as(s, fn), torch.inference_mode():
        for t in range(steps):
            fn.on = True
            cond = _forward(s, inputs, ids)
            cond[:, eos] = -math.inf  # min_new_tokens: generate bans EOS before the logits hook
            if gamma != 1:
                fn.on = False
                gen = ids[:, P:]
                unc = _text_only(s, torch.cat([neg, gen], 1))
                unc[:, eos] = -math.inf
                ls, lu = torch.log_softmax(cond, -1), torch.log_softmax(unc, -1)
                out = gamma * (ls - lu) + lu  # Eq. 6
                p = torch.softmax(cond, -1)
                out = torch.where(p >= beta * p.max(), out, torch.tensor(-math.inf))
            else:
                out = cond
            tok_t = out.argmax(-1)
            toks.append(int(tok_t)), scores.append(out[0])
            ids = torch.cat([ids, tok_t[:, None]], 1)
    return torch.tensor(toks), torch.stack(scores)


def run_pai(session, images, questions, overrides=()):
    probe = ScoresSpy()
    run = session.start(["pai", probe], {"pai": list(overrides)})
    outs = run.generate(images, questions, max_new_tokens=T, min_new_tokens=T)
    return outs, torch.stack(probe.steps, 1), run


def assert_scores_close(got, want, atol=1e-5):
    assert torch.equal(torch.isinf(got), torch.isinf(want)), "the cut-off keeps other tokens"
    fin = torch.isfinite(want)
    assert (got[fin] - want[fin]).abs().max() <= atol, f"max diff {(got[fin] - want[fin]).abs().max():.3g}"


#: a strong boost so tiny random models change their answers (the paper's 0.2 moves them little)
STRONG = ["alpha=2.0", "gamma=1.5"]


@pytest.mark.parametrize("family", FAMILIES)
def test_single_row_equals_eager_reference(family):
    s = tiny_session(family)
    image, q = tiny_images(1)[0], QUESTIONS[0]
    outs, scores, _ = run_pai(s, [image], [q], STRONG)
    toks, want = reference_pai(s, image, q, alpha=2.0, gamma=1.5)
    assert torch.equal(outs[0].token_ids, toks)
    assert_scores_close(scores[0], want)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_mixed_batch_equals_reference_per_row(family):
    s = tiny_session(family)
    images, qs = tiny_images(4, mixed=True), list(QUESTIONS)
    outs, scores, _ = run_pai(s, images, qs, STRONG + ["start_layer=1"])
    for i in range(4):
        toks, want = reference_pai(s, images[i], qs[i], alpha=2.0, gamma=1.5, layers=range(1, 4))
        assert torch.equal(outs[i].token_ids, toks), f"row {i}"
        assert_scores_close(scores[i], want)


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_boost_alone_equals_reference(family):
    """gamma = 1: the score transform only (no branch, the raw logits are the model's)."""
    s = tiny_session(family)
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    run = s.start(["pai"], {"pai": ["alpha=3.0", "gamma=1"]})
    outs = run.generate(images, qs, max_new_tokens=T, min_new_tokens=T, output_logits=True)
    assert run.branches == []
    for i in range(2):
        toks, want = reference_pai(s, images[i], qs[i], alpha=3.0, gamma=1)
        assert torch.equal(outs[i].token_ids, toks)
        want[:, s.model.generation_config.eos_token_id] = outs[i].logits[:, s.model.generation_config.eos_token_id]
        torch.testing.assert_close(outs[i].logits, want, atol=1e-5, rtol=0)


def test_strength_zero_is_baseline_bit_for_bit():
    s = tiny_session("llava")
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    base = s.start([]).generate(images, qs, max_new_tokens=T, min_new_tokens=T, output_logits=True)
    run = s.start(["pai"], {"pai": ["alpha=0", "gamma=1"]})
    off = run.generate(images, qs, max_new_tokens=T, min_new_tokens=T, output_logits=True)
    assert run.declarations() == {} and run.branches == []
    for b, o in zip(base, off):
        assert torch.equal(b.token_ids, o.token_ids) and torch.equal(b.logits, o.logits)


class Identity:
    """A transform that hands the scores back unchanged (the kernel alone)."""

    name = "identity-transform"

    def __init__(self, rows="text"):
        self.rows = rows

    @hookimpl
    def hallufix_configure(self, model):
        return points.attn_transform(range(model.num_layers), rows=self.rows)

    @hookimpl
    def hallufix_attn_transform(self, event):
        event.scores = event.scores.clone()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rows", ["last", "text"])
def test_identity_transform_equals_baseline(family, rows):
    s = tiny_session(family)
    images, qs = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    base = s.start([]).generate(images, qs, max_new_tokens=T, min_new_tokens=T, output_logits=True)
    run = s.start([Identity(rows)])
    got = run.generate(images, qs, max_new_tokens=T, min_new_tokens=T, output_logits=True)
    for b, g in zip(base, got):
        assert torch.equal(b.token_ids, g.token_ids)
        torch.testing.assert_close(g.logits, b.logits, atol=1e-5, rtol=0)


def test_stacks_with_clva():
    """pai,clva: CLVA's drift-layer bias enters the scores PAI transforms (bias first, then the transform) and its
    probes read the transformed probabilities; each with the other at strength 0 is the other alone, bit for bit."""
    s = tiny_session("llava")
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    clva = ["tau=1.0", "lambda_vis=0.5", "pos_layer=1"]
    kw = dict(max_new_tokens=T, min_new_tokens=T, output_logits=True)
    alone = s.start(["clva"], {"clva": clva}).generate(images, qs, **kw)
    with_off = s.start(["pai", "clva"], {"clva": clva, "pai": ["alpha=0", "gamma=1"]}).generate(images, qs, **kw)
    for a, b in zip(alone, with_off):
        assert torch.equal(a.logits, b.logits)
    run = s.start(["pai", "clva"], {"clva": clva, "pai": STRONG})
    both = run.generate(images, qs, **kw)
    fired = run.hook_stats["fired"]
    assert fired["logits"] == T and any(k.startswith("attn_transform.") for k in fired)
    assert any(k.startswith("attn_bias.") for k in fired) and any(k.startswith("attn_probs.") for k in fired)
    assert both[0].diagnostics["clva"] and both[0].diagnostics["pai"]
    assert any(not torch.equal(a.logits, b.logits) for a, b in zip(alone, both))


class TestPAIContract(MethodContract):
    method = "pai"
    noop = ["alpha=0", "gamma=1"]
    active = []


class VisualBias:
    """Another method's additive bias on the visual keys of the text rows, at every layer."""

    name = "visual-bias"

    @hookimpl
    def hallufix_configure(self, model):
        return points.attn_bias(range(model.num_layers))

    @hookimpl
    def hallufix_attn_bias(self, event):
        event.add(torch.where(event.visual_keys, 0.7, 0.0))


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_identity_transform_keeps_another_methods_bias(family):
    """The transform kernel adds other methods' biases to the scores it hands over (declared rows) and keeps them on
    the rows it does not transform (SDPA with their float mask): bias + identity == bias alone."""
    s = tiny_session(family)
    images, qs = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    kw = dict(max_new_tokens=T, min_new_tokens=T, output_logits=True)
    alone = s.start([VisualBias()]).generate(images, qs, **kw)
    both = s.start([VisualBias(), Identity("last")]).generate(images, qs, **kw)
    for a, b in zip(alone, both):
        assert torch.equal(a.token_ids, b.token_ids)
        torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=0)


def test_stacks_with_vcd_two_branches():
    """vcd,pai: two branches (noised image, no image) in one batch of 3B rows; PAI boosts the main and the noised
    rows, not its image-free rows; each method's logits hook sees its own branch."""
    s = tiny_session("llava")
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    probe = ScoresSpy()
    run = s.start(["vcd", "pai", probe], {"pai": STRONG})
    outs = run.generate(images, qs, max_new_tokens=T, min_new_tokens=T)
    assert [b.name for _, b in run.branches] == ["vcd_noised", "pai_no_image"]
    assert len(outs) == 2 and all(len(o.token_ids) == T for o in outs)
    scores = torch.stack(probe.steps, 1)
    assert scores.shape[0] == 2 and torch.equal(scores.argmax(-1), torch.stack([o.token_ids for o in outs]))
