"""DoLa against an independent eager implementation of the paper's equations (per row: JSD-chosen premature layer,
adaptive plausibility constraint, contrast, repetition penalty) on every family, single and left-padded batches of
mixed image sizes; strength 0; stacking with CLVA; the candidate buckets; and the contract suite."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from hallufix import hookimpl
from hallufix import points as P
from hallufix.testing import MethodContract
from hallufix.testing.recorder import ScoresSpy
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix_dola.method import bucket, premature_choice

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
T = 4


class _EagerDoLa(LogitsProcessor):
    """The paper's step, row by row, from hidden states captured by plain module pre-hooks."""

    def __init__(self, captured, lm_head, layers, valid, alpha=1.0, top=0.1, theta=1.2, divergence="jsd"):
        self.captured, self.W, self.layers, self.valid = captured, lm_head.weight, layers, valid
        self.divergence = divergence
        self.alpha, self.top, self.theta = alpha, top, theta
        self.steps, self.chosen, self.ties = [], [], []

    def __call__(self, input_ids, scores):
        out = torch.empty_like(scores, dtype=torch.float32)
        chosen, ties = [], {}
        for b in range(scores.shape[0]):
            final = scores[b].float()
            q_n = torch.softmax(final, -1)
            js = {}
            for j in self.layers:
                q_j = torch.softmax(self.captured[j][b].float() @ self.W.T.float(), -1)
                m = 0.5 * (q_n + q_j)
                if self.divergence == "jsd":  # sum_v p log(p / m), with 0 log 0 = 0
                    kl = lambda p: float(sum(p[v] * math.log(p[v] / m[v]) for v in range(len(p)) if p[v] > 0))  # noqa
                    js[j] = 0.5 * kl(q_n) + 0.5 * kl(q_j)
                else:  # the official code: KL(M || q) on the tokens the mature scores leave finite
                    keep = torch.isfinite(final)
                    js[j] = 0.5 * float((m * (m.log() - q_n.log()))[keep].sum()) + \
                        0.5 * float((m * (m.log() - q_j.log()))[keep].sum())
            order = sorted(self.layers, key=lambda j: -js[j])  # stable: ties keep the first candidate
            best = order[0]
            chosen.append(best)
            out[b] = self._row(b, best, final, input_ids)
            # float32 divergences this close (relative 1e-4) are decided by the kernels' rounding, which differs
            # between CPUs: the runner-up is an equally valid reading of the equation there
            if len(order) > 1 and js[order[0]] - js[order[1]] <= 1e-4 * abs(js[order[0]]):
                ties[b] = (order[1], self._row(b, order[1], final, input_ids))
        self.steps.append(out.clone())
        self.chosen.append(chosen)
        self.ties.append(ties)
        return out

    def _row(self, b, layer, final, input_ids):
        logq_m = torch.log_softmax(self.captured[layer][b].float() @ self.W.T.float(), -1)
        logq_n = torch.log_softmax(final, -1)
        f = logq_n - self.alpha * logq_m
        plausible = logq_n >= logq_n.max() + math.log(self.top)
        f = torch.where(plausible, f, torch.full_like(f, -math.inf))
        P = self.valid.shape[1]  # the row's own tokens: padding is not always in front (InstructBLIP's queries)
        own = [t for i, t in enumerate(input_ids[b].tolist()) if i >= P or bool(self.valid[b, i])]
        for tok in set(own):
            f[tok] = f[tok] * self.theta if f[tok] < 0 else f[tok] / self.theta
        return f


def _eager(s, images, questions, layers, **kw):
    rows = [[im] for im in images]
    inputs = s.adapter.inputs(s.processor, rows, questions, s.device)
    dec = s.adapter.decoder_layers(s.model)
    captured = {}

    def grab(j):
        def pre(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            captured[j] = h[:, -1, :].detach().clone()
        return pre

    handles = [dec[j].register_forward_pre_hook(grab(j), with_kwargs=True) for j in layers]
    proc = _EagerDoLa(captured, s.model.get_output_embeddings(), layers, inputs["attention_mask"].bool(), **kw)
    try:
        with torch.inference_mode():
            out = s.model.generate(**inputs, max_new_tokens=T, min_new_tokens=T, do_sample=False,
                                   logits_processor=LogitsProcessorList([proc]), return_dict_in_generate=True)
    finally:
        for h in handles:
            h.remove()
    _eager.ties = proc.ties  # per step {row: (runner-up layer, its scores)} where the choice is a near-tie
    return s.adapter.new_tokens(out.sequences, inputs), torch.stack(proc.steps, 1), proc.chosen


def _hallufix(s, images, questions, overrides):
    spy = ScoresSpy()
    run = s.start(["dola", spy], {"dola": overrides})
    gens = run.generate(images, questions, max_new_tokens=T, min_new_tokens=T)
    return gens, torch.stack(spy.steps, 1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("divergence", ["jsd", "official"])
def test_equals_eager_reference(family, batch, divergence):
    s = tiny_session(family)
    images = tiny_images(batch, mixed=batch > 1)
    questions = [QUESTIONS[i % 4] for i in range(batch)]
    layers = [0, 1, 2, 3]
    ref_tokens, ref_scores, chosen = _eager(s, images, questions, layers, divergence=divergence)
    gens, scores = _hallufix(s, images, questions, ["layers=0-3", f"divergence={divergence}"])
    for t, ties in enumerate(_eager.ties):  # a near-tie: either layer's contrast is the reference's
        for b, (layer, alt) in ties.items():
            if torch.allclose(scores[b, t], alt, atol=1e-5, rtol=0, equal_nan=True):
                ref_scores[b, t], chosen[t][b] = alt, layer
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=0)
    for i, g in enumerate(gens):
        assert torch.equal(g.token_ids, ref_tokens[i][: len(g.token_ids)])
        counts = g.diagnostics["dola"]["premature_layers"]
        assert sum(counts.values()) == T
        assert counts == {str(k): v for k, v in sorted(
            {j: [c[i] for c in chosen].count(j) for j in set(c[i] for c in chosen)}.items())}


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_single_candidate_and_norm_switch(family):
    """Default bucket on 4 layers is the single layer 0 (no JSD); premature_norm=true goes through the final norm."""
    s = tiny_session(family)
    images, questions = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    ref_tokens, ref_scores, _ = _eager(s, images, questions, [0])
    gens, scores = _hallufix(s, images, questions, [])
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=0)
    _, normed = _hallufix(s, images, questions, ["premature_norm=true", "layers=2"])
    assert not torch.equal(normed, scores)


def test_strength_zero_is_baseline():
    s = tiny_session("llava")
    images, questions = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    base = s.start([], {}).generate(images, questions, max_new_tokens=T, min_new_tokens=T, output_logits=True)
    run = s.start(["dola"], {"dola": ["alpha=0", "repetition_penalty=1"]})
    assert run.declarations().get("dola", []) == []
    off = run.generate(images, questions, max_new_tokens=T, min_new_tokens=T, output_logits=True)
    for b, o in zip(base, off):
        assert torch.equal(b.token_ids, o.token_ids) and torch.equal(b.logits, o.logits)


class EagerDoLaPlugin:
    """The eager reference as a plugin: hidden states read at ``layer_input.{j}`` (after earlier methods' edits),
    the paper's step in ``hallufix_logits``; for stacks."""

    name = "eager-dola"

    def __init__(self, layers):
        self.layers, self.captured, self.proc = layers, {}, None

    @hookimpl
    def hallufix_configure(self, model):
        return P.layer_input(self.layers) + P.logits()

    @hookimpl
    def hallufix_layer_input(self, event):
        if self.proc is None or event.forward.phase == "prefill" and event.layer == self.layers[0]:
            self.proc = _EagerDoLa(self.captured, self.lm_head, self.layers, event.layout.valid)
        self.captured[event.layer] = event.hidden[:, -1, :].clone()

    @hookimpl
    def hallufix_logits(self, event):
        event.scores = self.proc(event.input_ids, event.scores)


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_stacks_with_clva(family):
    """CLVA edits attention, DoLa reads the stream CLVA produced: ``clva,dola`` equals ``clva`` + the eager reference,
    and differs from DoLa alone."""
    s = tiny_session(family)
    images, questions = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    ref = EagerDoLaPlugin([0, 1, 2, 3])
    ref.lm_head = s.model.get_output_embeddings()
    spy_ref, spy, spy_alone = ScoresSpy(), ScoresSpy(), ScoresSpy()
    kw = dict(max_new_tokens=T, min_new_tokens=T)
    want = s.start(["clva", ref, spy_ref], {}).generate(images, questions, **kw)
    got = s.start(["clva", "dola", spy], {"dola": ["layers=0-3"]}).generate(images, questions, **kw)
    s.start(["dola", spy_alone], {"dola": ["layers=0-3"]}).generate(images, questions, **kw)
    torch.testing.assert_close(torch.stack(spy.steps), torch.stack(spy_ref.steps), atol=1e-5, rtol=0)
    assert [g.token_ids.tolist() for g in got] == [g.token_ids.tolist() for g in want]
    assert not torch.equal(torch.stack(spy.steps), torch.stack(spy_alone.steps))


@pytest.mark.parametrize("family", FAMILIES)
def test_candidates_ride_on_the_models_head_call(family, monkeypatch):
    """The candidates' lens rows are computed with the model's own ``lm_head`` call (one head call per forward,
    the weight in several blocks); the same scores and tokens as with their separate product."""
    from hallufix.intercept import lens_join

    s = tiny_session(family)
    images, questions = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    head, calls = s.model.get_output_embeddings(), []
    handle = head.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        monkeypatch.setattr(lens_join, "CHUNK_BYTES", 1)
        gens, scores = _hallufix(s, images, questions, ["layers=0-3"])
        joined_calls = len(calls)
        monkeypatch.setattr(lens_join, "MAX_JOIN_ROWS", 0)  # no join: one separate product per forward
        sep_gens, sep_scores = _hallufix(s, images, questions, ["layers=0-3"])
    finally:
        handle.remove()
    assert joined_calls == T and len(calls) == 3 * T
    torch.testing.assert_close(scores, sep_scores, atol=1e-5, rtol=0)
    assert [g.token_ids.tolist() for g in gens] == [g.token_ids.tolist() for g in sep_gens]


def test_buckets_follow_depth():
    assert bucket("low", 32, tied=False) == [0, 2, 4, 6, 8, 10, 12, 14]  # the official 7B early-exit layers
    assert bucket("high", 32, tied=False) == [16, 18, 20, 22, 24, 26, 28, 30]
    assert bucket("low", 28, tied=True) == [2, 4, 6, 8, 10, 12]
    assert bucket("low", 60, tied=False) == list(range(0, 20, 2))
    assert bucket("high", 60, tied=False) == list(range(40, 60, 2))
    assert bucket("low", 4, tied=False) == [0] and bucket("low", 2, tied=True) == [1]
    assert bucket("1,3", 4, tied=False) == [1, 3]


@pytest.mark.parametrize("divergence", ["jsd", "official"])
def test_layer_choice_is_finite_where_probabilities_vanish(divergence):
    """Banned tokens (``-inf`` mature scores) and candidate probabilities that underflow to 0 in float32 (logits
    spread over more than 104): the choice is the float64 definition's, with no ``0 * -inf`` reaching the sums."""
    g = torch.Generator().manual_seed(3)
    final = torch.randn(2, 500, generator=g, dtype=torch.float64) * 4
    final[:, :40] = -math.inf  # banned by an earlier processor
    final[:, 100:300] -= 400.0  # finite, but q_N underflows to exactly 0 there in float32
    stacked = torch.randn(3, 2, 500, generator=g, dtype=torch.float64) * 4
    stacked[1] = final.clamp_min(-1e3) + 0.3 * torch.randn(2, 500, generator=g, dtype=torch.float64)
    # candidate 1 is the closest to q_N, and its q_j (so M too) is exactly 0 in float32 on 100:300 and the banned
    # tokens: a 0 * -inf there would make it look the farthest
    q_n, q_j = final.softmax(-1), stacked.softmax(-1)
    m = 0.5 * (q_n + q_j)
    if divergence == "jsd":  # sum_v p log(p / m) with 0 log 0 = 0, in float64
        kl = lambda p: torch.where(p > 0, p * (p / m).log(), 0.0).sum(-1)  # noqa: E731
        want = (0.5 * kl(q_n[None]) + 0.5 * kl(q_j)).argmax(0)
    else:
        keep = torch.isfinite(final)[None]
        terms = m * (m.log() - q_n.log()[None]) + m * (m.log() - q_j.log())
        want = torch.where(keep, terms, 0.0).sum(-1).argmax(0)
    got = premature_choice(final.float().log_softmax(-1), stacked.float().log_softmax(-1), divergence)
    assert torch.equal(got, want) and not bool((want == 1).any())


class TestDoLaContract(MethodContract):
    """The contract; the real-input checks compare DoLa's own scores (what picks the token), not the raw logits: a
    near-tie of ``log q_N - log q_M`` can flip in half precision where the raw logits' top choice is clear."""

    method = "dola"
    noop = ["alpha=0", "repetition_penalty=1"]
    active = ["layers=0-3"]

    def _run_real(self, family, dtype, setting):
        from dataclasses import replace

        session = tiny_session(family, shape="real", dtype=dtype)
        overrides = [] if setting == "preset" else list(self.active if self.real_active is None else self.real_active)
        images, questions = tiny_images(4, mixed=True), list(QUESTIONS[:4])
        kw = dict(max_new_tokens=self.real_max_new_tokens, min_new_tokens=self.real_max_new_tokens)

        def gen(imgs, qs):
            spy = ScoresSpy()
            with self._device_guard():
                out = session.start([self.method, spy], {self.method: overrides}).generate(imgs, qs, **kw)
            scores = torch.stack(spy.steps, 1).clamp(min=-1e4)  # banned tokens: -inf -> a finite floor
            return [replace(g, logits=scores[i, : len(g.token_ids)]) for i, g in enumerate(out)]

        return gen(images, questions), [gen([images[i]], [questions[i]])[0] for i in range(len(images))]


@pytest.mark.parametrize("beams", [1, 3])
def test_dola_with_padded_branch_rows_in_the_batch_equals_one_at_a_time(beams):
    """``dola,pai`` with PAI's image-free rows in the batch (left-padded to the image prompt's length): DoLa's
    repetition penalty reads the padding of the rows its scores cover (the main rows, each beam), so a batch
    equals its rows one at a time, greedy and under beam search."""
    from hallufix.decoding import Decoding

    s = tiny_session("llava")
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    run = s.start(["dola", "pai"], {"pai": ["alpha=2.0", "gamma=1.5", "branch=rows"]})
    kw = dict(max_new_tokens=3, decoding=Decoding("beam", num_beams=beams) if beams > 1 else None)
    outs = run.generate(images, qs, **kw)
    for i in range(2):
        assert torch.equal(run.generate(images[i:i + 1], qs[i:i + 1], **kw)[0].token_ids, outs[i].token_ids)
