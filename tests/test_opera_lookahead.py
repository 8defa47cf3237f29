"""OPERA's batched look-ahead (the k candidates of every beam in one forward, a 4D mask) against the per-candidate
look-ahead and the eager reference, with the retrospection rollback firing (tests/opera_reference.py), on the four
tiny families; and a candidate hook that looks ahead in one batched forward leaves transformers' beam search bit
for bit."""
from __future__ import annotations

import pytest
import torch
from opera_reference import EagerOPERA, Sink

from hallufix import hookimpl
from hallufix.decoding import Decoding
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix.testing.reference import attention_as
from hallufix_opera.method import OPERA, Config

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
BEAM = Decoding.from_args("beam", num_beams=3)
#: sigma 50 (the official default), r = 1, k = 3, image term for 2 tokens: with the sink on generated token 3 the
#: retrospection fires several times in 10 tokens on every tiny family
ROLLBACK = dict(scale_factor=50.0, threshold=1, num_candidates=3, penalty_weight=1.0, warmup=2)
T = 10


class Recording(OPERA):
    """OPERA that keeps, per candidate step, the candidates' response rows ``(N, k, t + 1)`` and image mass
    ``(N, k)`` it scored (whichever look-ahead produced them)."""

    def __init__(self, config):
        super().__init__(config)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _look_ahead(self, event, cand, P, t):
        rows, image = super()._look_ahead(event, cand, P, t)
        self.seen.append((rows.clone(), image.clone()))
        return rows, image


def _run(session, images, questions, lookahead: str, sink: bool, rollback: str, reuse: bool = True):
    method = Recording(Config(**ROLLBACK, rollback=rollback, lookahead=lookahead, reuse=reuse))
    run = session.start(([Sink()] if sink else []) + [method])
    outs = run.generate(images, questions, max_new_tokens=T, min_new_tokens=T, decoding=BEAM)
    return outs, method


@pytest.mark.parametrize("family", FAMILIES)
def test_rollback_equals_eager_reference(family):
    """Penalty and rollback on, with restarts happening: the batched and the per-candidate look-ahead give the
    eager reference's tokens and restart as often (one prompt, mixed image size)."""
    s = tiny_session(family)
    images, q = tiny_images(2, mixed=True)[1:], [QUESTIONS[0]]
    ref = EagerOPERA(s, images[0], q[0], ROLLBACK, BEAM.num_beams, sink=True)
    with attention_as(s, ref.attn), torch.inference_mode():
        expected = ref.run(T)
    assert ref.rollbacks > 0
    for mode, reuse in (("batched", True), ("batched", False), ("each", True)):
        out = _run(s, images, q, mode, sink=True, rollback="on", reuse=reuse)[0][0]
        assert out.token_ids.tolist() == expected, (mode, reuse)
        d = out.diagnostics["opera"]
        assert d["rollbacks"] == ref.rollbacks and d["lookahead"] == mode
        # the kept look-ahead stood in for most decode steps (not the redone step after each restart)
        assert (d["reused_steps"] > T // 2) == (mode == "batched" and reuse), (mode, reuse, d)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [1, 2], ids=["single", "padded-batch"])
def test_batched_lookahead_equals_per_candidate(family, batch):
    """Every step's candidate attention rows and image mass agree to 1e-5 (float32) and the tokens are identical:
    one prompt with restarts, and a left-padded batch of mixed image sizes (rollback off)."""
    s = tiny_session(family)
    images = tiny_images(batch + 1, mixed=True)[1:]
    qs = list(QUESTIONS[:batch])
    sink, rollback = batch == 1, "on" if batch == 1 else "off"
    b, rb = _run(s, images, qs, "each", sink, rollback)
    for reuse in (True, False):  # the kept look-ahead as the next step, or a decode forward per step
        a, ra = _run(s, images, qs, "batched", sink, rollback, reuse=reuse)
        assert [x.token_ids.tolist() for x in a] == [y.token_ids.tolist() for y in b]
        assert all((x.diagnostics["opera"]["reused_steps"] > 0) == reuse for x in a)
        assert len(ra.seen) == len(rb.seen) >= T
        for (rows_a, img_a), (rows_b, img_b) in zip(ra.seen, rb.seen):
            torch.testing.assert_close(rows_a, rows_b, atol=1e-5, rtol=0)
            torch.testing.assert_close(img_a, img_b, atol=1e-5, rtol=0)


class _CandidateHook:
    """A method that declares a no-op logits point (so the run counts it as active) and acts in its candidate
    hook only."""

    @hookimpl
    def hallufix_configure(self, model):
        from hallufix import points

        return points.logits()

    @hookimpl
    def hallufix_logits(self, event):
        pass


class _Both(_CandidateHook):
    """A candidate hook that looks the top-3 of every beam ahead both ways, keeps the largest logit difference,
    and changes nothing."""

    name = "both"

    def __init__(self):
        self.diff = 0.0

    @hookimpl
    def hallufix_beam_candidates(self, event):
        cand = event.logits.topk(3, -1).indices
        many = event.lookahead_many(cand)
        each = torch.stack([event.lookahead(cand[:, j]) for j in range(3)], 1)
        self.diff = max(self.diff, float((many - each).abs().max()))


@pytest.mark.parametrize("family", FAMILIES)
def test_lookahead_many_leaves_beam_search_bit_for_bit(family):
    """Batched look-ahead forwards crop the cache back exactly: transformers' beam search bit for bit on a
    left-padded batch of mixed image sizes, and their logits equal one-candidate look-aheads (1e-5)."""
    s = tiny_session(family)
    images, qs = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    base = s.start([]).generate(images, qs, max_new_tokens=5, decoding=BEAM, output_logits=True)
    both = _Both()
    watched = s.start([both]).generate(images, qs, max_new_tokens=5, decoding=BEAM, output_logits=True)
    for x, y in zip(base, watched):
        assert torch.equal(x.token_ids, y.token_ids) and torch.equal(x.logits, y.logits)
    assert 0.0 <= both.diff <= 1e-5


class _Keeper(_CandidateHook):
    """A candidate hook that keeps a batched look-ahead of every beam's top-``k`` and changes nothing: the search
    reuses it as the next decode step wherever the chosen tokens were looked ahead."""

    name = "keeper"

    def __init__(self, k: int):
        self.k, self.reused, self.steps = k, 0, 0

    @hookimpl
    def hallufix_beam_candidates(self, event):
        self.steps += 1
        self.reused += int(event.reused)
        event.lookahead_many(event.logits.topk(self.k, -1).indices, logits=False, keep=True)


class _DecodeProbe:
    """A method with a decode-step hook that does not implement the candidate hook (it counts its forwards)."""

    name = "decode-probe"

    def __init__(self):
        self.forwards = 0

    @hookimpl
    def hallufix_configure(self, model):
        from hallufix import points

        return points.attn_probs([0], rows="last", phases={"decode"})

    @hookimpl
    def hallufix_attn_probs(self, event):
        self.forwards += 1


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_lookahead_stands_in_for_the_decode_step(family):
    """A reused step (no decoder forward: the kept look-ahead's keys appended to the cache, its final-norm rows
    through lm_head) gives transformers' beam search: identical tokens, every step's logits to 1e-5 (float32), on a
    left-padded batch of mixed image sizes; a method with decode hooks that cannot know about it turns reuse off."""
    s = tiny_session(family)
    images, qs = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    base = s.start([]).generate(images, qs, max_new_tokens=6, min_new_tokens=6, decoding=BEAM, output_logits=True)
    keeper = _Keeper(2 * BEAM.num_beams)
    kept = s.start([keeper]).generate(images, qs, max_new_tokens=6, min_new_tokens=6, decoding=BEAM,
                                      output_logits=True)
    for x, y in zip(base, kept):
        assert x.token_ids.tolist() == y.token_ids.tolist()
        torch.testing.assert_close(y.logits, x.logits, atol=1e-5, rtol=0)
    assert keeper.reused == keeper.steps - 1  # every step after the first ran no forward of its own
    keeper, probe = _Keeper(2 * BEAM.num_beams), _DecodeProbe()
    s.start([keeper, probe]).generate(images, qs, max_new_tokens=6, min_new_tokens=6, decoding=BEAM)
    assert keeper.reused == 0 and probe.forwards >= 2 * (keeper.steps - 1)  # decode forwards and look-aheads
