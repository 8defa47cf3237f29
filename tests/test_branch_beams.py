"""Branch passes under beam search. Rows mode: every block of branch rows is beam-expanded like the main rows and
receives the main rows' processed scores, so transformers' beam search keeps, orders and reorders the same beams
in every block, their KV-cache rows with them. A separate plain-model branch (PAI's default) prefills once per
prompt row and reorders its own cache after the main beams at every step. Checked against an independent eager beam search of PAI written
from the paper (Eq. 4-6: each step, per live beam, a full boosted forward of the beam's own sequence and an
image-free forward of its generated tokens, no cache), on a left-padded batch of mixed image sizes."""
from __future__ import annotations

import math

import pytest
import torch

from hallufix import hookimpl
from hallufix.decoding import Decoding
from hallufix.plugins import PluginError
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix.testing.recorder import ScoresSpy
from hallufix.testing.reference import attention_as

from test_pai import EagerPAI, STRONG, _forward, _text_only

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
T = 4
BEAMS = 3


def reference_pai_beam(s, image, question, beams=BEAMS, alpha=2.0, gamma=1.5, beta=0.1, steps=T):
    """``(tokens (steps,), score)`` of the best hypothesis of a plain beam search over PAI's guided scores
    (no EOS: ``min_new_tokens = max_new_tokens``, so every hypothesis has ``steps`` tokens and the best is the
    highest sum); step 0 expands the prompt's single beam."""
    inputs = s.adapter.inputs(s.processor, [[image]], [question], "cpu")
    P = inputs["input_ids"].shape[1]
    cols = inputs["input_ids"][0] == s.info.image_token_id
    fn = EagerPAI(range(s.info.num_layers), alpha, cols, P - 1)
    neg = s.processor.tokenizer([s.adapter.prompt(s.processor, question, 0)], return_tensors="pt")["input_ids"]
    eos = s.model.generation_config.eos_token_id
    live = [(torch.zeros((), dtype=torch.float32), inputs["input_ids"])]
    with attention_as(s, fn), torch.inference_mode():
        for _ in range(steps):
            cands = []
            for score, ids in live:
                fn.on = True
                cond = _forward(s, inputs, ids)
                cond[:, eos] = -math.inf  # min_new_tokens bans EOS before the logits hook
                fn.on = False
                unc = _text_only(s, torch.cat([neg, ids[:, P:]], 1))
                unc[:, eos] = -math.inf
                ls, lu = torch.log_softmax(cond, -1), torch.log_softmax(unc, -1)
                out = gamma * (ls - lu) + lu  # Eq. 6
                p = torch.softmax(cond, -1)
                out = torch.where(p >= beta * p.max(), out, torch.tensor(-math.inf))[0]
                top = (score + out).topk(beams)
                cands += [(v, torch.cat([ids, i.view(1, 1)], 1)) for v, i in zip(top.values, top.indices)]
            live = sorted(cands, key=lambda c: -float(c[0]))[:beams]
    return live[0][1][0, P:], float(live[0][0])


class BranchScoresLog(ScoresSpy):
    """Placed after PAI: per step, the main rows' ``input_ids`` and the image-free branch's raw scores."""

    name = "branch-log"

    @hookimpl
    def hallufix_logits(self, event):
        self.steps.append((event.input_ids.clone(), event.branches["pai_no_image"].clone()))


def _beam():
    return Decoding("beam", num_beams=BEAMS)


@pytest.mark.parametrize("mode", ["rows", "separate"])
@pytest.mark.parametrize("family", FAMILIES)
def test_pai_under_beam_search_equals_eager_beam_reference(family, mode):
    s = tiny_session(family)
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    run = s.start(["pai"], {"pai": list(STRONG) + [f"branch={mode}"]})
    outs = run.generate(images, qs, max_new_tokens=T, min_new_tokens=T, decoding=_beam())
    for i in range(2):
        toks, _ = reference_pai_beam(s, images[i], qs[i])
        assert torch.equal(outs[i].token_ids, toks), (i, outs[i].token_ids, toks)
    # batched == one at a time
    for i in range(2):
        one = run.generate(images[i:i + 1], qs[i:i + 1], max_new_tokens=T, min_new_tokens=T, decoding=_beam())
        assert torch.equal(one[0].token_ids, outs[i].token_ids)


@pytest.mark.parametrize("mode", ["rows", "separate"])
@pytest.mark.parametrize("family", FAMILIES)
def test_branch_rows_follow_their_beams_step_by_step(family, mode):
    """Each running beam's image-free scores are those of its own generated tokens after the image-free prompt
    (the branch's cache was reordered with the main beams at every step)."""
    s = tiny_session(family)
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    log = BranchScoresLog()
    run = s.start(["pai", log], {"pai": list(STRONG) + [f"branch={mode}"]})
    run.generate(images, qs, max_new_tokens=T, min_new_tokens=T, decoding=_beam())
    P = s.adapter.inputs(s.processor, [[im] for im in images], qs, "cpu")["input_ids"].shape[1]
    eos = s.model.generation_config.eos_token_id
    negs = [s.processor.tokenizer([s.adapter.prompt(s.processor, q, 0)], return_tensors="pt")["input_ids"]
            for q in qs]
    assert len(log.steps) == T
    checked = 0
    with torch.inference_mode():
        for t, (ids, branch) in enumerate(log.steps):
            assert ids.shape[0] == branch.shape[0] == 2 * BEAMS
            for r in range(ids.shape[0]):
                if t == 0 and r % BEAMS:  # step 0: only each prompt's first beam is alive
                    continue
                want = _text_only(s, torch.cat([negs[r // BEAMS], ids[r:r + 1, P:]], 1))
                want[:, eos] = -math.inf
                got = branch[r]
                assert (torch.log_softmax(got, -1) - torch.log_softmax(want[0], -1))[torch.isfinite(got)].abs().max() \
                    <= 1e-4, (t, r)
                checked += 1
    assert checked == 2 + (T - 1) * 2 * BEAMS
    # later steps hold beams with different histories: the check covered reordered rows
    assert len({tuple(row.tolist()) for row in log.steps[-1][0][:BEAMS, P:]}) == BEAMS


def test_hooked_separate_branch_and_candidate_methods_are_refused_under_beams():
    s = tiny_session("llava")
    run = s.start(["vcd"], {"vcd": ["branch=separate"]})  # VCD's branch runs every method's hooks
    with pytest.raises(PluginError, match="--branch-mode rows"):
        run.generate(tiny_images(1), list(QUESTIONS[:1]), max_new_tokens=2, decoding=_beam())
    run = s.start(["vcd", "opera"], {"vcd": ["branch=rows"]})
    with pytest.raises(PluginError, match="beam-candidate"):
        run.generate(tiny_images(1), list(QUESTIONS[:1]), max_new_tokens=2, decoding=_beam())


def test_vcd_rows_stacked_with_clva_under_beams_batched_equals_one_at_a_time():
    """CLVA keeps per-beam state (its beam-reorder hook: transformers' loop with hallufix's reorder step) and
    sees VCD's noised rows too; under beams a batch equals its rows one at a time, and VCD's branch changes the
    result (the contrast acts)."""
    s = tiny_session("qwen2-vl")
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    over = {"vcd": ["branch=rows", "alpha=3.0"], "clva": ["tau=1.0", "lambda_vis=0.5", "pos_layer=1"]}
    run = s.start(["vcd", "clva"], over)
    kw = dict(max_new_tokens=T, min_new_tokens=T, decoding=_beam())
    outs = run.generate(images, qs, **kw)
    for i in range(2):
        assert torch.equal(run.generate(images[i:i + 1], qs[i:i + 1], **kw)[0].token_ids, outs[i].token_ids)
    clva_only = s.start(["clva"], {"clva": over["clva"]}).generate(images, qs, **kw)
    assert any(not torch.equal(a.token_ids, b.token_ids) for a, b in zip(outs, clva_only))
