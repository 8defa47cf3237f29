"""Prefetched logit-lens rows (``LensEvent.prefetch``) ride on the model's own ``lm_head`` call: on every family,
float32 and bfloat16, a left-padded batch of mixed image sizes, the model's scores stay bit for bit those of plain
``generate``, the head runs once per forward, and the prefetched rows equal the separate product
``lm_head(norm(h))`` of transformers' own hidden states; the same with branch rows (VCD), a full prefill (the head
sees every position), a head that cannot join (the separate product), and the bitwise probe itself."""
from __future__ import annotations

import pytest
import torch

from hallufix import hookimpl
from hallufix import points as P
from hallufix.intercept import HookTable, Interceptor, lens_join
from hallufix.plugins import new_manager
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix.testing.recorder import ScoresSpy

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
T = 3


class Prefetcher:
    """Prefetches the lens of ``layers`` (even layers normed, odd raw) and reads it after the forward."""

    name = "lens-prefetcher"

    def __init__(self, layers):
        self.layers, self.got = list(layers), []

    @hookimpl
    def hallufix_configure(self, model):
        return P.logit_lens(self.layers) + P.logits()

    @hookimpl
    def hallufix_logit_lens(self, event):
        event.forward.memo.setdefault("prefetcher", {})[event.layer] = event
        event.prefetch(norm=event.layer % 2 == 0)

    @hookimpl
    def hallufix_logits(self, event):
        evs = event.forward.memo["prefetcher"]
        self.got.append({j: ev.logits(norm=j % 2 == 0).clone() for j, ev in evs.items()})


class HeadCalls:
    """Counts the calls of the head module (a plain hook registered before the run's own)."""

    def __init__(self, head):
        self.n = 0
        self.handle = head.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.n += 1


def _plain(s, images, questions):
    inputs = s.adapter.inputs(s.processor, [[im] for im in images], questions, s.device)
    with torch.inference_mode():
        out = s.model.generate(**inputs, max_new_tokens=T, min_new_tokens=T, do_sample=False,
                               return_dict_in_generate=True, output_logits=True, output_hidden_states=True)
    return out


def _separate(s, h, norm):
    head, fnorm = s.model.get_output_embeddings(), s.adapter.final_norm(s.model)
    with torch.inference_mode():
        return head(fnorm(h) if norm else h).float()


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(lens_join, "CHUNK_BYTES", 1)  # 64-row blocks: the tiny heads' 400 rows in 7 blocks


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_model_logits_bitwise_and_lens_rows_equal_separate_product(family, dtype, small_blocks):
    s = tiny_session(family, dtype=dtype)
    images, questions = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    L = s.info.num_layers
    reader, spy, alone = Prefetcher(range(L)), ScoresSpy(), ScoresSpy()
    s.start([alone], {}).generate(images, questions, max_new_tokens=T, min_new_tokens=T)
    calls = HeadCalls(s.model.get_output_embeddings())
    try:
        s.start([reader, spy], {}).generate(images, questions, max_new_tokens=T, min_new_tokens=T)
    finally:
        calls.handle.remove()
    assert calls.n == T  # one head call per forward: every lens row rode on it
    plain = _plain(s, images, questions)
    for step in range(T):
        assert torch.equal(spy.steps[step], alone.steps[step]), f"step {step}: model logits changed"
        kept = torch.isfinite(spy.steps[step])  # what the run's own processors leave (its banned tokens: -inf)
        assert torch.equal(spy.steps[step][kept], plain.logits[step].float()[kept])
        for j in range(L):
            want = _separate(s, plain.hidden_states[step][j][:, -1], norm=j % 2 == 0)
            got = reader.got[step][j]
            assert got.shape == want.shape and got.dtype == torch.float32
            if dtype == "float32":
                torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            else:  # one bfloat16 rounding of the product
                torch.testing.assert_close(got, want, atol=0, rtol=2 ** -7)


def test_branch_rows_join(small_blocks):
    """VCD's branch rows are extra batch rows of the same forward: they ride along, the scores are unchanged."""
    s = tiny_session("llava")
    images, questions = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    spy_alone, spy = ScoresSpy(), ScoresSpy()
    s.start(["vcd", spy_alone], {}).generate(images, questions, max_new_tokens=T, min_new_tokens=T)
    reader = Prefetcher([0, 1])
    calls = HeadCalls(s.model.get_output_embeddings())
    try:
        s.start(["vcd", reader, spy], {}).generate(images, questions, max_new_tokens=T, min_new_tokens=T)
    finally:
        calls.handle.remove()
    assert calls.n == T
    for a, b in zip(spy_alone.steps, spy.steps):
        assert torch.equal(a, b)
    assert all(got[0].shape[0] == 4 for got in reader.got)  # 2 main rows + 2 branch rows


class _FullPrefill:
    name = "full-prefill"

    def __init__(self, layers):
        self.layers, self.events = layers, {}

    @hookimpl
    def hallufix_configure(self, model):
        return P.logit_lens(self.layers, phases={"prefill"})

    @hookimpl
    def hallufix_logit_lens(self, event):
        event.prefetch(norm=True)
        self.events[event.layer] = event


def test_full_prefill_head_sees_every_position(monkeypatch, small_blocks):
    """A forward without keeping only the last position: the head's input is ``(B, P, d)``."""
    monkeypatch.setattr(lens_join, "MAX_JOIN_ROWS", 100_000)
    s = tiny_session("qwen2-vl")
    images, questions = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    inputs = s.adapter.inputs(s.processor, [[im] for im in images], questions, s.device)
    with torch.inference_mode():
        plain = s.model(**inputs, output_hidden_states=True)
    rec = _FullPrefill([0, 1])
    pm = new_manager()
    pm.register(rec, name=rec.name)
    layout = s.adapter.layout(s.model, inputs, [[im] for im in images])
    calls = HeadCalls(s.model.get_output_embeddings())
    try:
        table = HookTable(pm, {rec: rec.hallufix_configure(s.info)})
        with torch.inference_mode(), Interceptor(s.model, s.adapter, table, pm, layout, s.info):
            out = s.model(**inputs)
    finally:
        calls.handle.remove()
    assert calls.n == 1 and out.logits.shape[1] == inputs["input_ids"].shape[1]
    assert torch.equal(out.logits, plain.logits)
    for j, ev in rec.events.items():
        assert ev._logits  # delivered by the head call, nothing left to compute
        torch.testing.assert_close(ev.logits(), _separate(s, plain.hidden_states[j][:, -1], True), atol=1e-5, rtol=0)


@pytest.mark.parametrize("why", ["too many rows", "probe fails", "offload hook"])
def test_rows_that_cannot_join_get_one_separate_product(monkeypatch, why):
    s = tiny_session("llava")
    if why == "too many rows":
        monkeypatch.setattr(lens_join, "MAX_JOIN_ROWS", 0)
    elif why == "probe fails":
        monkeypatch.setattr(lens_join, "joins_bitwise", lambda *a, **k: False)
    else:  # what accelerate's offload (``device_map``) leaves on a module: the head's device is its own business
        monkeypatch.setattr(s.model.get_output_embeddings(), "_hf_hook", object(), raising=False)
    images, questions = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    L = s.info.num_layers
    reader, spy = Prefetcher(range(L)), ScoresSpy()
    calls = HeadCalls(s.model.get_output_embeddings())
    try:
        s.start([reader, spy], {}).generate(images, questions, max_new_tokens=T, min_new_tokens=T)
    finally:
        calls.handle.remove()
    assert calls.n == 3 * T  # the model's call, one separate product per norm (normed, raw) per forward
    plain = _plain(s, images, questions)
    for step in range(T):
        kept = torch.isfinite(spy.steps[step])
        assert torch.equal(spy.steps[step][kept], plain.logits[step].float()[kept])
        for j in range(L):
            want = _separate(s, plain.hidden_states[step][j][:, -1], norm=j % 2 == 0)
            torch.testing.assert_close(reader.got[step][j], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("strategy", ["chunked", "stacked"])
@pytest.mark.parametrize("bias", [False, True])
def test_probe_says_what_the_join_does(dtype, strategy, bias, small_blocks):
    """Where the probe admits a join, the model's rows are bit for bit the head alone on fresh rows; the probe
    leaves the global random state alone; the lens rows equal their separate product within rounding."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(700, 48, generator=g).to(dtype)
    b = torch.randn(700, generator=g).to(dtype) if bias else None
    for m, r, sliced in [(1, 2, False), (3, 6, True), (40, 5, False), (4, 2, True)]:
        # the head's input (m, 1, d): contiguous, or the last position sliced out of a (m, 5, d) prefill
        full = torch.randn(m, 5 if sliced else 1, 48, generator=g).to(dtype)
        x = full[:, -1:, :]
        state = torch.get_rng_state()
        ok = lens_join.joins_bitwise(w, b, x, r, strategy)
        assert torch.equal(state, torch.get_rng_state())
        rows = torch.randn(r, 48, generator=g).to(dtype)
        model, lens = lens_join.joint_linear(x, rows, w, b, strategy)
        if ok:
            assert torch.equal(model, torch.nn.functional.linear(x, w, b))
        tol = 1e-5 if dtype == torch.float32 else 2 ** -7
        torch.testing.assert_close(lens.float(), torch.nn.functional.linear(rows, w, b).float(), atol=tol, rtol=tol)
    # chunking the output rows keeps each dot product
    assert lens_join.joins_bitwise(w, b, torch.zeros(1, 1, 48, dtype=dtype), 2, "chunked")
