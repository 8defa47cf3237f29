"""Every mechanism that touches a model lives in ``hallufix/intercept/`` (as an installer), through public
transformers APIs only; the reference harness registers one attention name, not one per call."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [ROOT / "hallufix", *sorted((ROOT / "plugins").glob("hallufix_*"))]
INTERCEPT = ROOT / "hallufix" / "intercept"

#: calls that change a model (hooks, attention implementations, weights, transformers' registries)
MODEL_TOUCHING = {
    "module hook": re.compile(r"\.register_(forward|forward_pre|full_backward|full_backward_pre|backward)_hook\("),
    "tensor hook": re.compile(r"\.register_hook\("),
    "attention switch": re.compile(r"\.set_attn_implementation\(|\._attn_implementation\s*="),
    "weight write": re.compile(r"\b(weight|bias|param\w*)\.data\s*=[^=]|\.weight\.(copy_|mul_|add_)\("),
    "attention registry": re.compile(r"(AttentionInterface|AttentionMaskInterface)\.register\("),
    "forward signature sniffing": re.compile(r"signature\([^)]*\.forward\)|logits_to_keep"),
}
#: private transformers API: never, not even in intercept/
PRIVATE = re.compile(r"_global_mapping|_local_mapping")


def _sources():
    for pkg in PACKAGES:
        for path in sorted(pkg.rglob("*.py")):
            yield path, path.read_text()


def test_model_touching_code_lives_in_intercept():
    found = []
    for path, text in _sources():
        if INTERCEPT in path.parents:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            for what, pattern in MODEL_TOUCHING.items():
                if pattern.search(code):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {what}: {line.strip()}")
    assert not found, "model-touching code outside hallufix/intercept/ (make it an installer there):\n" + \
        "\n".join(found)


def test_the_boundary_check_sees_what_it_forbids():
    samples = ["layer.register_forward_hook(fn)", "m.register_forward_pre_hook(fn, with_kwargs=True)",
               "model.set_attn_implementation({'text_config': 'eager'})", "o.weight.data = w * 2", "param.data = original", "o.weight.mul_(g)",
               "AttentionInterface.register('x', f)", "inspect.signature(model.forward)"]
    for s in samples:
        assert any(p.search(s) for p in MODEL_TOUCHING.values()), s


def test_no_private_transformers_registry():
    found = [f"{path.relative_to(ROOT)}:{n}" for path, text in _sources()
             for n, line in enumerate(text.splitlines(), 1) if PRIVATE.search(line.split("#", 1)[0])]
    assert not found, f"private transformers API used: {found}"


def test_reference_harness_registers_one_name_for_every_call():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
    from hallufix.testing.reference import generate_with_attention

    s = tiny_session("llava")
    images, qs = tiny_images(2), QUESTIONS[:2]

    def ref_a(module, q, k, v, mask, **kw):
        return sdpa_attention_forward(module, q, k, v, mask, **kw)

    def ref_b(module, q, k, v, mask, **kw):
        return sdpa_attention_forward(module, q, k, v, mask, **kw)

    first, _, _ = generate_with_attention(s, images, qs, ref_a, 2)
    names = set(ALL_ATTENTION_FUNCTIONS)
    second, _, _ = generate_with_attention(s, images, qs, ref_b, 2)
    assert set(ALL_ATTENTION_FUNCTIONS) == names
    assert torch.equal(first, second)
    assert s.adapter.get_text_attn_implementation(s.model) == "sdpa"  # restored


def test_installed_removes_in_reverse_also_when_an_install_fails():
    from hallufix.intercept.installer import Installed

    log = []

    class Step:
        def __init__(self, name, fail=False):
            self.name, self.fail = name, fail

        def install(self):
            log.append(f"+{self.name}")
            if self.fail:
                raise RuntimeError("boom")

        def remove(self):
            log.append(f"-{self.name}")

    with pytest.raises(RuntimeError, match="boom"):
        with Installed(Step("a"), None, Step("b"), Step("c", fail=True), Step("d")):
            pass
    assert log == ["+a", "+b", "+c", "-c", "-b", "-a"]


def test_eager_switch_is_restored_after_an_error():
    from hallufix.intercept.attn_impl import current, eager
    from hallufix.testing.models import tiny_session

    s = tiny_session("llava")
    key = s.adapter.text_config_key
    before = current(s.model, key)
    with pytest.raises(ValueError):
        with eager(s.model, key):
            assert current(s.model, key) == "eager"
            raise ValueError("inside")
    assert current(s.model, key) == before
