"""OPERA against an independent, slow, eager implementation written from the paper's equations (Huang et al., CVPR
2024, Eq. 2-6; official defaults from shikiw/OPERA), plus its contract, strength 0 == plain beam search bit for bit,
the candidate loop == transformers' beam search, and stacking with clva."""
from __future__ import annotations

import pytest
import torch
from opera_reference import EagerOPERA, Sink

from hallufix import hookimpl
from hallufix.decoding import Decoding
from hallufix.testing import MethodContract
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix.testing.reference import attention_as

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
BEAM = Decoding.from_args("beam", num_beams=3)
#: a setting that exercises every branch on tiny random models: image term for 2 tokens, then the column products
SETTING = dict(scale_factor=300.0, threshold=1, num_candidates=3, penalty_weight=1.0, warmup=2)
OVERRIDES = [f"{k}={v}" for k, v in SETTING.items()]


def _reference(session, image, question, setting, beams, T, sink=False, rollback=True):
    ref = EagerOPERA(session, image, question, setting, beams, sink)
    with attention_as(session, ref.attn), torch.inference_mode():
        return ref.run(T, rollback)


def _opera(session, images, questions, overrides, T, decoding=BEAM, plugins=("opera",)):
    run = session.start(list(plugins), {"opera": overrides})
    return run.generate(images, questions, max_new_tokens=T, min_new_tokens=T, decoding=decoding)


@pytest.mark.parametrize("family", FAMILIES)
def test_equals_eager_reference(family):
    """Identical tokens to the eager reference, penalty and rollback on (one prompt per call, mixed image size)."""
    s = tiny_session(family)
    images = tiny_images(2, mixed=True)[1:]
    T = 10
    out = _opera(s, images, [QUESTIONS[1]], OVERRIDES, T)[0]
    ref = _reference(s, images[0], QUESTIONS[1], SETTING, BEAM.num_beams, T)
    assert out.token_ids.tolist() == ref
    assert out.diagnostics["opera"]["steps"] >= T


def test_rollback_happens_and_changes_the_search():
    """With an attention sink on generated token 3 the retrospection fires: the diagnostics count restarts (each
    redoes steps), none without rollback, and the restarted search is deterministic."""
    s = tiny_session("llava")
    image, q = tiny_images(1), [QUESTIONS[0]]
    setting = [f"{k}={v}" for k, v in dict(SETTING, scale_factor=150.0).items()]

    def go(extra):
        run = s.start([Sink(), "opera"], {"opera": setting + extra})
        return run.generate(image, q, max_new_tokens=10, min_new_tokens=10, decoding=BEAM)[0]

    on, again, off = go(["rollback=on"]), go(["rollback=on"]), go(["rollback=off"])
    assert on.diagnostics["opera"]["rollbacks"] > 0 and off.diagnostics["opera"]["rollbacks"] == 0
    assert torch.equal(on.token_ids, again.token_ids) and on.diagnostics == again.diagnostics
    assert on.diagnostics["opera"]["steps"] > off.diagnostics["opera"]["steps"] == 10


def test_penalty_changes_the_answer_as_the_reference():
    """A prompt where the over-trust term changes the beam's answer (not only the candidate cut): OPERA differs
    from plain beam search and from OPERA at a smaller sigma, and equals the reference."""
    s = tiny_session("llava")
    image, q = tiny_images(1), [QUESTIONS[0]]
    out = _opera(s, image, q, OVERRIDES, 10)[0].token_ids.tolist()
    weak = _opera(s, image, q, [o for o in OVERRIDES if not o.startswith("scale")] + ["scale_factor=150"], 10)[0]
    plain = s.start([]).generate(image, q, max_new_tokens=10, min_new_tokens=10, decoding=BEAM)[0]
    assert out != plain.token_ids.tolist() and out != weak.token_ids.tolist()
    assert out == _reference(s, image[0], q[0], SETTING, BEAM.num_beams, 10)


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_zero_is_plain_beam_search_bit_for_bit(family):
    s = tiny_session(family)
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    base = s.start([]).generate(images, qs, max_new_tokens=5, decoding=BEAM, output_logits=True)
    zero = s.start(["opera"], {"opera": ["penalty_weight=0"]}).generate(images, qs, max_new_tokens=5,
                                                                        decoding=BEAM, output_logits=True)
    for a, b in zip(base, zero):
        assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.logits, b.logits)


class _Watcher:
    """A candidate hook that looks every beam's runner-up ahead and changes nothing."""

    name = "watcher"

    @hookimpl
    def hallufix_configure(self, model):
        from hallufix import points

        return points.logits()

    @hookimpl
    def hallufix_logits(self, event):
        pass

    @hookimpl
    def hallufix_beam_candidates(self, event):
        event.lookahead(event.logits.topk(2, -1).indices[:, 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_candidate_loop_is_transformers_beam_search(family):
    """The candidate-hook loop (with look-ahead forwards) gives transformers' _beam_search bit for bit on a
    left-padded batch of mixed image sizes."""
    s = tiny_session(family)
    images, qs = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    base = s.start([]).generate(images, qs, max_new_tokens=5, decoding=BEAM, output_logits=True)
    watched = s.start([_Watcher()]).generate(images, qs, max_new_tokens=5, decoding=BEAM, output_logits=True)
    for a, b in zip(base, watched):
        assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.logits, b.logits)


def test_stacks_with_clva():
    """opera + clva: clva's bias reaches the look-ahead rows; the stack runs, differs from opera alone, and is
    deterministic."""
    s = tiny_session("llava")
    images, qs = tiny_images(2), list(QUESTIONS[:2])
    over = OVERRIDES + ["rollback=off"]
    run = s.start(["clva", "opera"], {"opera": over, "clva": ["tau=1.0", "lambda_vis=0.5", "pos_layer=1"]})
    a = run.generate(images, qs, max_new_tokens=6, min_new_tokens=6, decoding=BEAM)
    b = s.start(["clva", "opera"], {"opera": over, "clva": ["tau=1.0", "lambda_vis=0.5", "pos_layer=1"]}
                ).generate(images, qs, max_new_tokens=6, min_new_tokens=6, decoding=BEAM)
    alone = _opera(s, images, qs, over, 6)
    assert all(torch.equal(x.token_ids, y.token_ids) for x, y in zip(a, b))
    assert "clva" in a[0].diagnostics and "opera" in a[0].diagnostics
    assert any(not torch.equal(x.token_ids, y.token_ids) for x, y in zip(a, alone)) or \
        run.hook_stats["fired"].get("attn_probs.1", 0) > 0


def test_refuses_greedy_and_batched_rollback():
    s = tiny_session("llava")
    with pytest.raises(ValueError, match="--decoding beam"):
        s.start(["opera"]).generate(tiny_images(1), [QUESTIONS[0]], max_new_tokens=3)
    with pytest.raises(ValueError, match="batch-size 1"):
        _opera(s, tiny_images(2), list(QUESTIONS[:2]), ["rollback=on"], 3)
    auto = _opera(s, tiny_images(2), list(QUESTIONS[:2]), [], 3)
    assert auto[0].diagnostics["opera"]["rollback_active"] is False


class TestOPERAContract(MethodContract):
    """The contract under beam search: the suite's generate calls run with 3 beams (opera acts there only), the
    rollback off (it needs one prompt per call; batched == single is checked on the penalty)."""

    method = "opera"
    noop = ["penalty_weight=0"]
    active = ["rollback=off", "num_candidates=3"]
    real_active = ["rollback=off", "num_candidates=3"]
    max_new_tokens = 3
    #: float32 only: in bfloat16 / float16 the candidate cut (top-k of the raw logits) flips on rounding ties between
    #: a padded batch and a single row, which moves a token's logit between its value and -999 (measured: 1e3)
    dtypes = ("float32",)

    decoding = BEAM

    def _gen(self, session, plugins, overrides, images=None, questions=None, n=1):
        images = images or tiny_images(n)
        questions = questions or list(QUESTIONS[:n])
        run = session.start(plugins, overrides)
        outs = run.generate(images, questions, max_new_tokens=self.max_new_tokens,
                            min_new_tokens=self.max_new_tokens, output_logits=True, decoding=BEAM)
        return run, outs
