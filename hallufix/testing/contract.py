"""The method contract suite every built-in and third-party method inherits.

    from hallufix.testing import MethodContract

    class TestMyMethod(MethodContract):
        method = "my-method"
        noop = ["strength=0"]          # overrides that make the method a no-op
        active = []                    # overrides that make it act on tiny random models (default config if [])
        # optional: families = ("llava",); dtypes = ("float32", "bfloat16"); real_active = [...]

On the default tiny models (4 layers, equal 56 px squares) of every family the method claims (``families``): the
method is registered through the entry point; it declares hook points; they fire at prefill and decode; the no-op
setting gives logits bitwise equal to the baseline; a run whose stack raises mid-generation leaves no hooks,
restores the attention implementation and the weights, and the model then generates exactly as before; a repeated
run is deterministic; a left-padded batch equals one-at-a-time generation.

What users bring (see :mod:`hallufix.testing.real`): the family's preset, configured against the real 7B
checkpoint's depth and heads, declares only layers the model has; and on tiny models at the real depth and head /
KV-head counts, in every dtype of ``dtypes``, a left-padded batch of 4 images of 4 sizes and 4 PIL modes gives
finite logits and the one-at-a-time answers (within the dtype's tolerance, :data:`BATCH_ATOL`), both with the
family preset and with the ``active`` setting.

Models are built on ``$HALLUFIX_TEST_DEVICE`` (default ``cpu``), so the same suite runs on a GPU.
"""
from __future__ import annotations

import pytest
import torch

from hallufix import hookimpl
from hallufix.testing.leaks import assert_no_hook_leaks, hook_snapshot
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix.models.families import FAMILIES
from hallufix.testing.real import RealInputsContract

TINY_FAMILIES = tuple(FAMILIES)  # every registered family (hallufix.models.families)


class _Bomb:
    """Raises at a given decode step, to test clean-up with the method installed."""

    name = "bomb"

    def __init__(self, step: int = 2):
        self.step = step

    @hookimpl
    def hallufix_forward_start(self, forward):
        if forward.step == self.step:
            raise RuntimeError("bomb: planted failure mid-generation")


class MethodContract(RealInputsContract):
    method: str = ""
    families: tuple[str, ...] = TINY_FAMILIES
    noop: list[str] = []
    active: list[str] = []
    max_new_tokens: int = 4
    #: (atol) for batched vs unbatched float32 logits (other dtypes: :data:`hallufix.testing.real.BATCH_ATOL`)
    batch_atol: float = 1e-4

    @pytest.fixture(params=TINY_FAMILIES)
    def family(self, request):
        if request.param not in self.families:
            pytest.skip(f"{self.method} does not claim {request.param}")
        return request.param

    @pytest.fixture
    def session(self, family):
        return tiny_session(family)

    def _gen(self, session, plugins, overrides, images=None, questions=None, n=1):
        images = images or tiny_images(n)
        questions = questions or list(QUESTIONS[:n])
        run = session.start(plugins, overrides)
        outs = run.generate(images, questions, max_new_tokens=self.max_new_tokens,
                            min_new_tokens=self.max_new_tokens, output_logits=True)
        return run, outs

    def test_registered(self):
        from hallufix.plugins import discover

        info = discover().get(self.method)
        assert info.dist, "method has no distribution"

    def test_declares_and_fires_points(self, session):
        run, _ = self._gen(session, [self.method], {self.method: list(self.active)})
        declared = run.declarations().get(self.method, [])
        assert declared, f"{self.method} declared no hook points with its active setting"
        fired = run.hook_stats["fired"]
        missing = [n for n in declared if n != "input_image" and fired.get(n, 0) == 0]
        assert not missing, f"declared but never fired: {missing}"

    def test_noop_equals_baseline(self, session):
        _, base = self._gen(session, [], {}, n=2)
        _, noop = self._gen(session, [self.method], {self.method: list(self.noop)}, n=2)
        for b, m in zip(base, noop):
            assert torch.equal(b.token_ids, m.token_ids)
            assert torch.equal(b.logits, m.logits), f"no-op differs by {(b.logits - m.logits).abs().max()}"

    def test_no_leaks_when_raising(self, session):
        before = hook_snapshot(session.model)
        _, reference = self._gen(session, [], {})
        with pytest.raises(RuntimeError, match="bomb"):
            self._gen(session, [self.method, _Bomb()], {self.method: list(self.active)})
        assert_no_hook_leaks(session.model, before)
        _, after = self._gen(session, [], {})
        assert torch.equal(reference[0].logits, after[0].logits)
        run, _ = self._gen(session, [self.method], {self.method: list(self.active)})
        assert_no_hook_leaks(session.model, before)

    def test_deterministic(self, session):
        _, a = self._gen(session, [self.method], {self.method: list(self.active)}, n=2)
        _, b = self._gen(session, [self.method], {self.method: list(self.active)}, n=2)
        for x, y in zip(a, b):
            assert torch.equal(x.logits, y.logits)

    def test_batched_equals_single(self, session):
        images, questions = tiny_images(2), [QUESTIONS[0], QUESTIONS[1]]
        _, batched = self._gen(session, [self.method], {self.method: list(self.active)}, images, questions)
        for i in range(2):
            _, single = self._gen(session, [self.method], {self.method: list(self.active)}, [images[i]],
                                  [questions[i]])
            assert torch.equal(batched[i].token_ids, single[0].token_ids)
            torch.testing.assert_close(batched[i].logits, single[0].logits, atol=self.batch_atol, rtol=0)
