"""The half of :class:`~hallufix.testing.MethodContract` that tests what users bring: real depths, mixed image
sizes and modes in one left-padded batch, half precision, the family presets.

Tolerance of "batched == one at a time" (:data:`BATCH_ATOL`, absolute, on logits of the tiny models, whose
logits are O(1): std ~0.3, |max| ~1.5). A padded batch and a single row run the same maths through different
kernel shapes (padding columns, a masked instead of an unmasked SDPA call, other GEMM blockings), so they differ
by rounding only; every layer rounds its activations to the model dtype, and the error of 28-32 layers stays a
few units in the last place of the logits:

* ``float32`` 1e-4 (the class's ``batch_atol``): eps 1.2e-7; measured differences are <= 1e-6.
* ``bfloat16`` 4e-2: 8 significant bits, one unit in the last place of a logit near 1 is 7.8e-3; measured
  differences are 1-2 units (<= 1.6e-2 on the four families), so 4e-2 is 5 units, an eighth of a logit std.
* ``float16`` 5e-3: 11 significant bits, one unit near 1 is 9.8e-4; measured <= 3e-3.

Greedy answers: the batched and single token ids must match step by step. Where they part, the single run's
logits must show a tie within the dtype's resolution -- its own choice beats the batched choice by at most
``2 * atol`` -- and comparison stops there, since later steps condition on different prefixes. (bf16 logits tie
exactly in random tiny models; a decisive answer that batching flips fails. With greedy decoding on the recorded
logits the tie rule follows from the logit tolerance; it is checked on its own for what picks tokens elsewhere.)

A method's own discrete choice (contrast's crop cells) may part the same way in half precision: a contract's
:meth:`RealInputsContract.decision_tied` asserts that a differing choice sat at a tie within the dtype's
resolution, and that row's answers are then not compared (first seen on an AVX2-only CPU, where a crop cell of the
real-depth Qwen2-VL in bfloat16 sat at its quantile within rounding: ``cells_gap`` in contrast's diagnostics).

Presets at real depth: :func:`configured_points` sees the layers a method *declares* in ``hallufix_configure``.
Layers it only probes inside ``ImageEvent.capture`` (ARA's band, contrast's crop-variant fusion / post layers) are
not declared anywhere, so they are checked by the real-depth runs with the preset instead (same depths as the
checkpoints; a probe past the last layer fails there).
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from hallufix.layout import ModelInfo
from hallufix.testing.models import QUESTIONS, device_for_tests, tiny_images, tiny_session

DTYPES = ("float32", "bfloat16", "float16")
BATCH_ATOL = {"float32": 1e-4, "bfloat16": 4e-2, "float16": 5e-3}

#: The language models of the checkpoints the family presets are written for, as ``ModelInfo`` (no weights):
#: llava-hf/llava-1.5-7b-hf, Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct,
#: Salesforce/instructblip-vicuna-7b (their config.json: layers, heads, KV heads, hidden size, image token id).
REAL_MODEL_INFO = {
    "llava": ModelInfo(family="llava", num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                       hidden_size=4096, image_token_id=32000, visual_tokens_per_image=576, grid=(24, 24),
                       name="llava-hf/llava-1.5-7b-hf"),
    "qwen2-vl": ModelInfo(family="qwen2-vl", num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
                          hidden_size=3584, image_token_id=151655, name="Qwen/Qwen2-VL-7B-Instruct"),
    "qwen2.5-vl": ModelInfo(family="qwen2.5-vl", num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
                            hidden_size=3584, image_token_id=151655, name="Qwen/Qwen2.5-VL-7B-Instruct"),
    "instructblip": ModelInfo(family="instructblip", num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                              hidden_size=4096, image_token_id=32001, visual_tokens_per_image=32,
                              name="Salesforce/instructblip-vicuna-7b"),
}


def assert_same_answers(batched, single, atol: float, where: str = "") -> None:
    """``batched`` and ``single`` (:class:`~hallufix.api.Generation` with ``logits``) give the same greedy answer:
    equal token ids and logits within ``atol`` up to the first step where the single run's top choice is tied
    (within ``2 * atol``) with the batched one; see the module docstring."""
    b_ids, s_ids = batched.token_ids.tolist(), single.token_ids.tolist()
    b_log, s_log = batched.logits.float().cpu(), single.logits.float().cpu()
    for t in range(min(len(b_ids), len(s_ids))):
        diff = (b_log[t] - s_log[t]).abs().max().item()
        assert diff <= atol, f"{where}step {t}: batched logits differ from one-at-a-time by {diff:.3g} > {atol:g}"
        if b_ids[t] != s_ids[t]:
            gap = (s_log[t, s_ids[t]] - s_log[t, b_ids[t]]).item()
            assert gap <= 2 * atol, (f"{where}step {t}: batched answer token {b_ids[t]}, one at a time {s_ids[t]} "
                                     f"by a margin of {gap:.3g} > 2 * {atol:g}: batching changed a decisive answer")
            return
    assert len(b_ids) == len(s_ids), f"{where}batched gave {len(b_ids)} tokens, one at a time {len(s_ids)}"


def configured_points(method: str, info: ModelInfo, overrides: list[str] = ()) -> list:
    """The hook points ``method`` declares with ``info.family``'s preset (plus ``overrides``) on a model described
    by ``info`` -- what ``hallufix run`` would install, without loading weights."""
    from hallufix.plugins import activate

    methods = activate([method], family=info.family, overrides={method: list(overrides)})
    results = methods.pm.hook.hallufix_configure(model=info)
    return [p for r in results for p in (r or [])]


class RealInputsContract:
    """Mixin of :class:`~hallufix.testing.MethodContract` (needs its ``method``, ``active`` and ``family``).

    Class attributes a subclass may set: ``dtypes`` (default all of :data:`DTYPES`; a method that cannot run in
    a dtype says so by leaving it out), ``real_active`` (overrides of the "active" setting at real depth; default
    ``active``), ``real_max_new_tokens`` (3), ``preset_declares`` (True: the family preset is not a no-op),
    ``strict_devices`` (True: on a CPU test device the real-depth runs run under
    :func:`hallufix.intercept.strict.enforce`, so a hook that treats a model tensor as host memory -- ``.numpy()``,
    mixing a host-built tensor into a device one -- fails here as it would on a GPU)."""

    dtypes: tuple[str, ...] = DTYPES
    real_active: list[str] | None = None
    real_max_new_tokens: int = 3
    preset_declares: bool = True
    strict_devices: bool = True
    #: (method, family, dtype, setting) -> (batched, singles) or the exception; shared by the tests below
    _real_cache: dict = {}

    def test_real_presets_address_existing_layers(self, family):
        info = REAL_MODEL_INFO[family]
        pts = configured_points(self.method, info)
        if self.preset_declares:
            assert pts, f"{self.method}'s {family} preset declares no hook points on {info.name}"
        bad = [p.name for p in pts if p.layer is not None and not 0 <= p.layer < info.num_layers]
        assert not bad, f"{self.method}'s {family} preset addresses layers {info.name} lacks " \
                        f"({info.num_layers} layers): {bad}"

    @pytest.fixture(params=DTYPES)
    def dtype(self, request):
        if request.param not in self.dtypes:
            pytest.skip(f"{self.method} does not claim {request.param}")
        return request.param

    @pytest.fixture(params=["preset", "active"])
    def setting(self, request, dtype):
        if request.param == "active" and dtype == "float16":
            pytest.skip("the active setting runs in float32 and bfloat16; float16 runs the preset")
        return request.param

    def decision_tied(self, batched, single, dtype: str) -> bool:
        """Whether a method's own discrete choice (a crop box, a selected layer) differs between a batched row and
        its single run at a tie within ``dtype``'s resolution -- then the answers may part, as greedy tokens may at
        a tied logit. Override in a method's contract: assert that a differing choice is a tie and return True;
        return False when the choices agree. The default: no such choice."""
        return False

    def _real_runs(self, family, dtype, setting):
        key = (type(self).__qualname__, self.method, family, dtype, setting)
        if key not in self._real_cache:
            try:
                self._real_cache[key] = self._run_real(family, dtype, setting)
            except Exception as exc:  # noqa: BLE001 -- re-raised by every test that reads it
                self._real_cache[key] = exc
        got = self._real_cache[key]
        if isinstance(got, Exception):
            raise got
        return got

    def _run_real(self, family, dtype, setting):
        session = tiny_session(family, shape="real", dtype=dtype)
        overrides = [] if setting == "preset" else list(self.active if self.real_active is None else self.real_active)
        images, questions = tiny_images(4, mixed=True), list(QUESTIONS[:4])
        kw = dict(max_new_tokens=self.real_max_new_tokens, min_new_tokens=self.real_max_new_tokens,
                  output_logits=True)
        if getattr(self, "decoding", None) is not None:  # a method that acts under one strategy (opera: beams)
            kw["decoding"] = self.decoding
        with self._device_guard():
            run = session.start([self.method], {self.method: overrides})
            batched = run.generate(images, questions, **kw)
            singles = [run.generate([images[i]], [questions[i]], **kw)[0] for i in range(len(images))]
        return batched, singles

    def _device_guard(self):
        if self.strict_devices and device_for_tests() == "cpu":
            from hallufix.intercept import strict

            return strict.enforce()
        return contextlib.nullcontext()

    def test_real_mixed_batch_logits_finite(self, family, dtype, setting):
        batched, singles = self._real_runs(family, dtype, setting)
        for i, g in enumerate([*batched, *singles]):
            what = f"batch row {i}" if i < len(batched) else f"single run {i - len(batched)}"
            bad = (~torch.isfinite(g.logits)).sum().item()
            assert not bad, f"{self.method} on real-depth {family} ({dtype}, {setting}): {bad} NaN/inf logits in {what}"

    def test_real_mixed_batch_equals_single(self, family, dtype, setting):
        batched, singles = self._real_runs(family, dtype, setting)
        for i, (b, s) in enumerate(zip(batched, singles)):
            if dtype != "float32" and self.decision_tied(b, s, dtype):
                continue  # the method's own choice parted at a tie: later logits condition on different inputs
            atol = self.batch_atol if dtype == "float32" else BATCH_ATOL[dtype]
            assert_same_answers(b, s, atol, where=f"{self.method} on real-depth {family} ({dtype}, {setting}), "
                                                  f"row {i} ({tiny_images(4, mixed=True)[i].size}): ")
