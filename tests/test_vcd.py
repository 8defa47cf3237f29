"""VCD against an independent, slow, eager implementation written from the paper (Leng et al., CVPR 2024):
DDPM forward diffusion of the pixels (Eq. 3-4), contrast (Eq. 5) and the adaptive plausibility constraint (Eq. 6-7),
each step a full forward of the whole sequence without a KV cache, one row at a time, under eager attention."""
from __future__ import annotations

import math

import pytest
import torch

from hallufix import hookimpl, points
from hallufix.intercept.attn_impl import eager
from hallufix.testing import MethodContract
from hallufix.testing.recorder import ScoresSpy
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix_vcd.noise import image_seed

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
T = 4


def ddpm_alpha_bar(t: int) -> float:
    """abar_t = prod_{s<=t} (1 - beta_s), beta_s = 1e-5 + (5e-3 - 1e-5) sigmoid(-6 + 12 s / 999) (in float64)."""
    prod = 1.0
    for s in range(t + 1):
        beta = 1e-5 + (5e-3 - 1e-5) / (1 + math.exp(-(-6 + 12 * s / 999)))
        prod *= 1 - beta
    return prod


def noised_pixels(pv: torch.Tensor, image, step: int, seed: int) -> torch.Tensor:
    """x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps for one image's pixel tensor (eps drawn as documented: a generator
    seeded per image)."""
    eps = torch.randn(pv.shape, generator=torch.Generator().manual_seed(image_seed(image, seed)))
    ab = ddpm_alpha_bar(step)
    return math.sqrt(ab) * pv + math.sqrt(1 - ab) * eps


def next_logits(session, inputs, ids):
    """Last-position logits of a full forward over ``ids`` (no cache), eager attention."""
    kw = dict(inputs)
    P = inputs["input_ids"].shape[1]
    kw["input_ids"] = ids
    kw["attention_mask"] = torch.ones_like(ids)
    if "mm_token_type_ids" in kw:
        extra = torch.zeros(1, ids.shape[1] - P, dtype=kw["mm_token_type_ids"].dtype)
        kw["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], extra], 1)
    return session.model(**kw, use_cache=False).logits[:, -1].float()


def reference_vcd(session, image, question, alpha=1.0, beta=0.1, step=500, seed=0, steps=T):
    """Greedy VCD for one row: ``(tokens (T,), scores (T, V))``."""
    s = session
    inputs = s.adapter.inputs(s.processor, [[image]], [question], "cpu")
    noised = dict(inputs)
    noised["pixel_values"] = noised_pixels(inputs["pixel_values"], image, step, seed)
    ids, toks, scores = inputs["input_ids"], [], []
    eos = s.model.generation_config.eos_token_id
    with eager(s.model, s.adapter.text_config_key), torch.inference_mode():
        for _ in range(steps):
            clean, dist = next_logits(s, inputs, ids), next_logits(s, noised, ids)
            clean[:, eos] = -math.inf  # min_new_tokens: generate bans EOS before the logits hook runs
            cd = (1 + alpha) * clean - alpha * dist
            p = torch.softmax(clean, -1)
            keep = p >= beta * p.max()  # Eq. 6: V_head = {y : p(y) >= beta max_w p(w)}
            cd = torch.where(keep, cd, torch.tensor(-math.inf))
            tok = cd.argmax(-1)
            toks.append(int(tok)), scores.append(cd[0])
            ids = torch.cat([ids, tok[:, None]], 1)
    return torch.tensor(toks), torch.stack(scores)


def run_vcd(session, images, questions, overrides=()):
    probe = ScoresSpy()
    run = session.start(["vcd", probe], {"vcd": list(overrides)})
    outs = run.generate(images, questions, max_new_tokens=T, min_new_tokens=T)
    return outs, torch.stack(probe.steps, 1), run  # scores (B, T, V)


def assert_scores_close(got, want, atol=1e-5):
    assert torch.equal(torch.isinf(got), torch.isinf(want)), "the plausibility cut-off keeps other tokens"
    fin = torch.isfinite(want)
    assert (got[fin] - want[fin]).abs().max() <= atol, f"max diff {(got[fin] - want[fin]).abs().max():.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_single_row_equals_eager_reference(family):
    s = tiny_session(family)
    image, q = tiny_images(1)[0], QUESTIONS[0]
    outs, scores, _ = run_vcd(s, [image], [q])
    toks, want = reference_vcd(s, image, q)
    assert torch.equal(outs[0].token_ids, toks)
    assert_scores_close(scores[0], want)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_mixed_batch_equals_reference_per_row(family):
    s = tiny_session(family)
    images, qs = tiny_images(4, mixed=True), list(QUESTIONS)
    outs, scores, _ = run_vcd(s, images, qs, ["alpha=2.0", "beta=0.05", "noise_step=700"])
    for i in range(4):
        toks, want = reference_vcd(s, images[i], qs[i], alpha=2.0, beta=0.05, step=700)
        assert torch.equal(outs[i].token_ids, toks), f"row {i}"
        assert_scores_close(scores[i], want)


def test_alpha_zero_is_baseline_bit_for_bit():
    s = tiny_session("llava")
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    base = s.start([]).generate(images, qs, max_new_tokens=T, min_new_tokens=T, output_logits=True)
    run = s.start(["vcd"], {"vcd": ["alpha=0"]})
    off = run.generate(images, qs, max_new_tokens=T, min_new_tokens=T, output_logits=True)
    assert run.declarations() == {} and run.branches == []
    for b, o in zip(base, off):
        assert torch.equal(b.token_ids, o.token_ids) and torch.equal(b.logits, o.logits)


def test_branch_rows_are_the_noised_image_and_main_rows_untouched():
    """The main rows' raw logits with VCD active are the baseline's (the branch rows are separate batch rows)."""
    s = tiny_session("qwen2.5-vl")
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    base = s.start([]).generate(images, qs, max_new_tokens=1, output_logits=True)
    outs = s.start(["vcd"]).generate(images, qs, max_new_tokens=1, output_logits=True)
    for b, o in zip(base, outs):
        torch.testing.assert_close(o.logits, b.logits, atol=1e-5, rtol=0)


def test_noise_is_per_image_not_per_position():
    img = tiny_images(2)
    assert image_seed(img[0], 0) != image_seed(img[1], 0) != image_seed(img[0], 1)
    assert image_seed(img[0], 0) == image_seed(img[0].copy(), 0)


def test_stacks_with_clva():
    """vcd,clva: CLVA acts on every row (main and noised), VCD contrasts them; equals a reference that runs CLVA's
    own path on the clean and on the noised input separately and contrasts the two."""
    s = tiny_session("llava")
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    probe = ScoresSpy()
    run = s.start(["clva", "vcd", probe], {"clva": ["tau=1.0", "lambda_vis=0.5", "pos_layer=1"]})
    outs = run.generate(images, qs, max_new_tokens=T, min_new_tokens=T)
    assert run.hook_stats["fired"]["logits"] == T
    got = torch.stack(probe.steps, 1)
    # reference: clva alone on clean and on pre-noised pixels, teacher-forced on VCD's tokens
    from hallufix_vcd.method import contrast

    for i in range(2):
        clean, noisy = _clva_logits(s, images[i], qs[i], outs[i].token_ids, noise=False), \
            _clva_logits(s, images[i], qs[i], outs[i].token_ids, noise=True)
        want = contrast(clean, noisy, 1.0, 0.1)
        assert torch.equal(want.argmax(-1), outs[i].token_ids)
        assert_scores_close(got[i], want, atol=1e-4)


def _clva_logits(s, image, q, tokens, noise: bool):
    """CLVA-active raw logits of each step for one row, forced on ``tokens``."""
    return forced_logits(s, ["clva"], {"clva": ["tau=1.0", "lambda_vis=0.5", "pos_layer=1"]}, image, q, tokens, noise)


def forced_logits(s, plugins, overrides, image, q, tokens, noise: bool):
    """Raw logits per step of one row with ``plugins`` active, forced on ``tokens`` (a logits hook that bans the
    rest); ``noise``: the row's pixels pre-noised as VCD's branch does (step 500, seed 0)."""
    class Force:
        name = "force"

        def __init__(self):
            self.raw, self.t = [], 0

        @hookimpl
        def hallufix_configure(self, model):
            return points.logits()

        @hookimpl
        def hallufix_logits(self, event):
            self.raw.append(event.scores[0].detach().clone())
            forced = torch.full_like(event.scores, -math.inf)
            forced[:, tokens[self.t]] = 0.0
            self.t += 1
            event.scores = forced

    force = Force()
    run = s.start(plugins + [force], overrides)
    if noise:  # the test's own noised inputs (an instance attribute over the adapter's method, removed after)
        orig = s.adapter.inputs

        def noisy_inputs(processor, rows, questions, device):
            inp = orig(processor, rows, questions, device)
            inp["pixel_values"] = noised_pixels(inp["pixel_values"], rows[0][0], 500, 0).to(inp["pixel_values"].dtype)
            return inp

        s.adapter.inputs = noisy_inputs
    try:
        run.generate([image], [q], max_new_tokens=len(tokens), min_new_tokens=len(tokens))
    finally:
        if noise:
            del s.adapter.inputs
    return torch.stack(force.raw)


class TestVCDContract(MethodContract):
    method = "vcd"
    noop = ["alpha=0"]
    active = []
    preset_declares = True


def test_nonfinite_guard_names_main_rows():
    """A NaN in a main row's scores is reported with that row's index (branch rows are never named)."""
    from hallufix.intercept.guards import NonFiniteLogits

    class NaNRow1:
        name = "nan-row-1"

        @hookimpl
        def hallufix_configure(self, model):
            return points.logits()

        @hookimpl
        def hallufix_logits(self, event):
            bad = event.scores.clone()
            bad[1, 0] = float("nan")
            event.scores = bad

    s = tiny_session("llava")
    with pytest.raises(NonFiniteLogits) as info:
        s.start(["vcd", NaNRow1()]).generate(tiny_images(3), list(QUESTIONS[:3]), max_new_tokens=2)
    assert info.value.rows == [1]


def test_lockstep_wrapper_copies_a_row_dependent_processor():
    """bp.lockstep(p): a processor whose output depends on the row (a seeded draw) runs on the main rows and its
    result is copied to the branch rows, so the rows stay in lockstep."""
    from hallufix.intercept.branch import BranchPass
    from hallufix.branches import Branch

    s = tiny_session("llava")
    images, qs = tiny_images(2), list(QUESTIONS[:2])
    rows = [[im] for im in images]
    inputs = s.adapter.inputs(s.processor, rows, qs, "cpu")
    bp = BranchPass.build(s, [("m", Branch("x")), ("n", Branch("y", image="none"))], inputs, rows, qs)
    assert bp.inputs["input_ids"].shape[0] == 6 and bp.layout.rows_of("y").tolist() == [False] * 4 + [True] * 2
    seen = []

    def draw(input_ids, scores):
        seen.append(scores.shape[0])
        return torch.randn(scores.shape, generator=torch.Generator().manual_seed(scores.shape[0]))

    out = bp.lockstep(draw)(bp.inputs["input_ids"], torch.zeros(6, 11))
    assert seen == [2] and torch.equal(out[:2], out[2:4]) and torch.equal(out[:2], out[4:])


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_sampled_protocol_batched_equals_one_at_a_time(family):
    """VCD's published protocol samples (temperature 1, top-p 1): with the branch rows in lockstep, each row's seeded
    samples do not depend on its batch neighbours, and they differ from greedy VCD."""
    from hallufix.decoding import Decoding

    s = tiny_session(family)
    images, questions = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    keys = [f"row-{i}" for i in range(3)]
    dec = Decoding("sample", seed=7)
    kw = dict(max_new_tokens=6, min_new_tokens=6, decoding=dec)
    run = s.start(["vcd"], {})
    batched = run.generate(images, questions, row_keys=keys, **kw)
    single = [run.generate([im], [q], row_keys=[k], **kw)[0] for im, q, k in zip(images, questions, keys)]
    assert [g.token_ids.tolist() for g in batched] == [g.token_ids.tolist() for g in single]
    assert [g.seed for g in batched] == [g.seed for g in single]
    greedy = run.generate(images, questions, max_new_tokens=6, min_new_tokens=6)
    assert [g.token_ids.tolist() for g in batched] != [g.token_ids.tolist() for g in greedy]
