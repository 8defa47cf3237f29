"""The two ways to run a branch (extra batch rows, or separately on its own rows and KV cache) and per-branch hook
selection: both modes equal the methods' eager references and each other; a branch forward looks to hooks like a
forward over the branch's rows; a selection runs only the selected methods' hooks on the branch."""
from __future__ import annotations

import pytest
import torch

from hallufix import hookimpl, points
from hallufix.branches import Branch
from hallufix.decoding import Decoding
from hallufix.plugins import PluginError
from hallufix.intercept.branch import SeparateLayout
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix.testing.recorder import ScoresSpy
from hallufix_vcd.method import VCD, contrast, BRANCH as VCD_BRANCH
from hallufix_vcd.noise import diffuse, image_seed

from test_pai import reference_pai, run_pai, STRONG
from test_vcd import assert_scores_close, forced_logits as _forced, reference_vcd, run_vcd

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
T = 4
CLVA = ["tau=1.0", "lambda_vis=0.5", "pos_layer=1"]


@pytest.mark.parametrize("family", FAMILIES)
def test_pai_rows_and_separate_equal_reference_and_each_other(family):
    """PAI on a left-padded batch of mixed-size images: the image-free branch as padded rows and as its own short
    prompt both equal the eager reference per row (1e-5, same tokens) and each other."""
    s = tiny_session(family)
    images, qs = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    got = {}
    for mode in ("rows", "separate"):
        outs, scores, run = run_pai(s, images, qs, list(STRONG) + [f"branch={mode}"])
        assert [m for _, b in run.branches for m in [b.resolved_mode()]] == [mode]
        got[mode] = (outs, scores)
        for i in range(3):
            toks, want = reference_pai(s, images[i], qs[i], alpha=2.0, gamma=1.5)
            assert torch.equal(outs[i].token_ids, toks)
            assert_scores_close(scores[i], want)
    for a, b in zip(got["rows"][0], got["separate"][0]):
        assert torch.equal(a.token_ids, b.token_ids)
    assert_scores_close(got["separate"][1], got["rows"][1])


@pytest.mark.parametrize("family", FAMILIES)
def test_vcd_separate_equals_reference_and_rows(family):
    """VCD's noised branch run separately equals the eager reference per row and the rows mode."""
    s = tiny_session(family)
    images, qs = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    rows_out, rows_scores, _ = run_vcd(s, images, qs, ["branch=rows"])
    sep_out, sep_scores, run = run_vcd(s, images, qs, ["branch=separate"])
    assert run.branches[0][1].resolved_mode() == "separate"
    for i in range(3):
        toks, want = reference_vcd(s, images[i], qs[i])
        assert torch.equal(sep_out[i].token_ids, toks) and torch.equal(rows_out[i].token_ids, toks)
        assert_scores_close(sep_scores[i], want)
    assert_scores_close(sep_scores, rows_scores)


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_sampled_lockstep_separate_equals_rows(family):
    """Seeded sampling: the separate branch consumes the main rows' drawn token; samples equal the rows mode's and
    a batch equals one row at a time."""
    s = tiny_session(family)
    images, qs = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    keys = [f"row-{i}" for i in range(3)]
    kw = dict(max_new_tokens=6, min_new_tokens=6, decoding=Decoding("sample", seed=7))
    rows = s.start(["vcd"], {"vcd": ["branch=rows"]}).generate(images, qs, row_keys=keys, **kw)
    run = s.start(["vcd"], {"vcd": ["branch=separate"]})
    sep = run.generate(images, qs, row_keys=keys, **kw)
    single = [run.generate([im], [q], row_keys=[k], **kw)[0] for im, q, k in zip(images, qs, keys)]
    assert [g.token_ids.tolist() for g in sep] == [g.token_ids.tolist() for g in rows]
    assert [g.token_ids.tolist() for g in sep] == [g.token_ids.tolist() for g in single]


def test_strength_zero_is_baseline_bit_for_bit_in_separate_mode():
    s = tiny_session("qwen2-vl")
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    kw = dict(max_new_tokens=T, min_new_tokens=T, output_logits=True)
    base = s.start([]).generate(images, qs, **kw)
    for plugins, ov in ((["vcd"], {"vcd": ["alpha=0", "branch=separate"]}),
                        (["pai"], {"pai": ["alpha=0", "gamma=1", "branch=separate"]})):
        got = s.start(plugins, ov).generate(images, qs, **kw)
        for a, b in zip(base, got):
            assert torch.equal(a.logits, b.logits)


class _Log:
    """A shared record: a method's attributes are its own per branch, an object they point to is shared."""

    def __init__(self):
        self.calls = []


class Recorder:
    """Records, per layer-0 input hook call, the forward's phase, row count and whether it is a branch forward."""

    name = "recorder"

    def __init__(self):
        self.log = _Log()

    @property
    def calls(self):
        return self.log.calls

    @hookimpl
    def hallufix_configure(self, model):
        return points.layer_input([0]) + points.logits()

    @hookimpl
    def hallufix_layer_input(self, event):
        lay = event.layout
        self.log.calls.append((event.forward.phase, event.forward.step, event.hidden.shape[0],
                           isinstance(lay, SeparateLayout), tuple(lay.branch_names)))

    @hookimpl
    def hallufix_logits(self, event):
        pass


def test_branch_forward_looks_like_a_forward_over_the_branch_rows():
    """hooks='all' on a separate branch: each step the main forward (B rows, main layout) then the branch forward
    (its own B rows, a SeparateLayout naming the branch, its own prefill / decode phase and step)."""
    s = tiny_session("qwen2.5-vl")
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    rec = Recorder()
    s.start(["vcd", rec], {"vcd": ["branch=separate"]}).generate(images, qs, max_new_tokens=3, min_new_tokens=3)
    want = []
    for t, phase in enumerate(["prefill", "decode", "decode"]):
        want += [(phase, t, 2, False, ()), (phase, t, 2, True, (VCD_BRANCH,))]
    assert rec.calls == want


class VCDNoClva(VCD):
    """VCD whose noised branch excludes CLVA's hooks (hooks='all' minus clva: runs separately)."""

    @hookimpl
    def hallufix_declare_branches(self, model):
        c = self.config
        return [Branch(VCD_BRANCH, image="same", exclude=("clva",),
                       pixels=lambda x, image: diffuse(x, c.noise_step, image_seed(image, c.seed)))]


def test_hook_selection_vcd_branch_excludes_clva():
    """clva,vcd with VCD's branch excluding CLVA: the contrast of the CLVA-corrected model on the clean image with
    the plain model on the noised image (each computed on its own), not CLVA on both."""
    s = tiny_session("llava")
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    probe = ScoresSpy()
    vcd = VCDNoClva(VCD.Config())
    run = s.start(["clva", vcd, probe], {"clva": CLVA})
    assert run.branches[0][1].resolved_mode() == "separate"
    outs = run.generate(images, qs, max_new_tokens=T, min_new_tokens=T)
    got = torch.stack(probe.steps, 1)
    spy = ScoresSpy()
    s.start(["clva", "vcd", spy], {"clva": CLVA}).generate(images, qs, max_new_tokens=T, min_new_tokens=T)
    for i in range(2):
        clean = _forced(s, ["clva"], {"clva": CLVA}, images[i], qs[i], outs[i].token_ids, noise=False)
        plain_noised = _forced(s, [], {}, images[i], qs[i], outs[i].token_ids, noise=True)
        want = contrast(clean, plain_noised, 1.0, 0.1)
        assert torch.equal(want.argmax(-1), outs[i].token_ids)
        assert_scores_close(got[i], want, atol=1e-4)
    assert not torch.allclose(got, torch.stack(spy.steps, 1), atol=1e-3)  # CLVA on the noised branch differs


def test_pai_default_branch_runs_the_plain_model_with_other_methods_on():
    """pai,clva (PAI's default separate branch, hooks='none'): CLVA's hooks fire on the main forwards only, and
    the result equals PAI + CLVA with the image-free branch computed by the plain model."""
    s = tiny_session("llava")
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    run = s.start(["pai", "clva"], {"pai": list(STRONG), "clva": CLVA})
    (_, br), = run.branches
    assert br.hooks == "none" and br.resolved_mode() == "separate" and br.hook_methods(["pai", "clva"]) == []
    outs = run.generate(images, qs, max_new_tokens=T, min_new_tokens=T)
    assert all(len(o.token_ids) == T for o in outs)


def test_declaration_errors_and_hooked_separate_branch_refused_under_beams():
    with pytest.raises(ValueError, match="mode='rows'"):
        Branch("b", mode="rows", hooks="none")
    with pytest.raises(ValueError, match="mode must be one of"):
        Branch("b", mode="fast")
    with pytest.raises(ValueError, match="hooks must be"):
        Branch("b", hooks="some")
    assert Branch("b", exclude=("pai",)).resolved_mode("rows") == "separate"
    assert Branch("b", hooks=()).resolved_mode() == "separate" and Branch("b", hooks=[]).hook_methods(["pai"]) == []
    assert Branch("b").resolved_mode("separate") == "separate" and Branch("b", mode="rows").resolved_mode(
        "separate") == "rows"
    assert Branch("b", hooks=("clva", "pai"), exclude=("pai",)).hook_methods(["pai", "vcd", "clva"]) == ["clva"]
    s = tiny_session("llava")  # a branch with methods' hooks cannot run separately under beams (it can as rows)
    run = s.start(["vcd"], {"vcd": ["branch=separate"]})
    with pytest.raises(PluginError, match="beam"):
        run.generate(tiny_images(1), list(QUESTIONS[:1]), max_new_tokens=2, decoding=Decoding("beam", num_beams=2))


@pytest.mark.parametrize("fold", [True, False])
def test_static_gains_and_folds_stay_per_forward(fold):
    """fhi (frozen head gains, folded into o_proj or applied by the core) with VCD's branch separate equals the rows
    mode: the main forward's folds / gains are off during the branch forward and the branch's own apply to it."""
    s = tiny_session("llava")
    images, qs = tiny_images(1), list(QUESTIONS[:1])
    fhi = ["query_row=prompt_last", f"fold={str(fold).lower()}", "tau_perc=0.05", "tau_reas=0.04", "g_perc=1.5",
           "g_reas=0.7", "perc_max_layer=3", "reas_min_layer=2"]
    kw = dict(max_new_tokens=T, min_new_tokens=T)
    got = {}
    for mode in ("rows", "separate"):
        spy = ScoresSpy()
        run = s.start(["fhi", "vcd", spy], {"fhi": fhi, "vcd": [f"branch={mode}"]})
        outs = run.generate(images, qs, **kw)
        got[mode] = ([o.token_ids for o in outs], torch.stack(spy.steps, 1))
    assert [t.tolist() for t in got["rows"][0]] == [t.tolist() for t in got["separate"][0]]
    assert_scores_close(got["separate"][1], got["rows"][1])
    spy = ScoresSpy()
    s.start(["vcd", spy], {"vcd": ["branch=separate"]}).generate(images, qs, **kw)
    assert not torch.allclose(torch.stack(spy.steps, 1), got["separate"][1], atol=1e-3)  # fhi acted


def test_run_level_mode_overrides_auto_branches_only():
    """``MethodRun.branch_mode`` runs branches declared ``auto`` in that mode (VCD's default): equal to the
    method's own ``branch=separate``; a branch with an explicit mode keeps it."""
    s = tiny_session("llava")
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    kw = dict(max_new_tokens=T, min_new_tokens=T, output_logits=True)
    rec = Recorder()
    run = s.start(["vcd", rec])
    run.branch_mode = "separate"
    other = s.start(["vcd", Recorder()], {"vcd": ["branch=separate"]})
    a, b = run.generate(images, qs, **kw), other.generate(images, qs, **kw)
    assert all(torch.equal(x.logits, y.logits) for x, y in zip(a, b))
    assert any(call[3] for call in rec.calls)  # branch forwards ran on their own rows
    assert Branch("b", mode="rows").resolved_mode("separate") == "rows"


class RopeDeltas:
    """Reads the model's ``rope_deltas`` (Qwen keeps them between prefill and decode) in every logits hook."""

    name = "rope-deltas"

    def __init__(self, model):
        self.model, self.seen = model, []

    @hookimpl
    def hallufix_configure(self, model):
        return points.logits()

    @hookimpl
    def hallufix_logits(self, event):
        self.seen.append(self.model.model.rope_deltas.clone())


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_qwen_rope_deltas_stay_the_main_rows(family):
    """A separate branch's prefill computes its own rope_deltas (PAI's image-free prompt: zeros; mixed image sizes
    give the main rows different deltas); the main rows' stay on the model after every branch forward."""
    s = tiny_session(family)
    images, qs = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    s.start([]).generate(images, qs, max_new_tokens=2, min_new_tokens=2)
    main = s.model.model.rope_deltas.clone()
    assert main.abs().sum() > 0 and len(set(main.flatten().tolist())) > 1
    probe = RopeDeltas(s.model)
    s.start(["pai", probe], {"pai": list(STRONG)}).generate(images, qs, max_new_tokens=3, min_new_tokens=3)
    assert len(probe.seen) == 3 and all(torch.equal(d, main) for d in probe.seen)


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_stateful_method_on_a_separate_branch_equals_rows(family):
    """clva,vcd with VCD's branch separate (hooks='all'): CLVA computes anchors at each prefill and reuses them at
    decode; the branch's prefill must not overwrite the main rows' (each keeps its own method state), so the
    result equals the rows mode, where CLVA sees both blocks in one forward."""
    s = tiny_session(family)
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    got = {}
    for mode in ("rows", "separate"):
        spy = ScoresSpy()
        outs = s.start(["clva", "vcd", spy], {"clva": CLVA, "vcd": [f"branch={mode}"]}).generate(
            images, qs, max_new_tokens=T, min_new_tokens=T)
        got[mode] = ([o.token_ids.tolist() for o in outs], torch.stack(spy.steps, 1), outs[0].diagnostics["clva"])
    assert got["rows"][0] == got["separate"][0]
    assert_scores_close(got["separate"][1], got["rows"][1])
    assert got["rows"][2] == got["separate"][2]  # the main rows' diagnostics, not the branch's
