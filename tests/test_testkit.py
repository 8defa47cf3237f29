"""The test kit itself: real-shape tiny models, the dtype axis, mixed images, the test device, and the
"same answers" rule MethodContract applies."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hallufix import hookimpl, points
from hallufix.api import Generation
from hallufix.models.tiny import TINY_FAMILIES, _real_mrope_section, build_tiny
from hallufix.testing.models import MIXED_MODES, MIXED_SIZES, device_for_tests, tiny_images, tiny_session
from hallufix.testing.real import BATCH_ATOL, REAL_MODEL_INFO, assert_same_answers, configured_points


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_real_shape_has_the_checkpoints_depth_and_heads(family):
    s = tiny_session(family, shape="real")
    info, real = s.info, REAL_MODEL_INFO[family]
    assert (info.num_layers, info.num_heads, info.num_kv_heads) == (real.num_layers, real.num_heads,
                                                                   real.num_kv_heads)
    assert info.head_dim == 8 and info.hidden_size == 8 * real.num_heads
    head = s.model.get_output_embeddings().weight
    assert not head[:11].any() and head[11:].abs().sum(-1).min() > 0  # answers are text, never special tokens
    if family == "instructblip":
        assert s.model.config.num_query_tokens == s.processor.num_query_tokens == 32
    if family.startswith("qwen"):
        section = s.model.config.get_text_config().rope_parameters["mrope_section"]
        assert section == [1, 2, 1] and sum(section) == info.head_dim // 2


def test_real_mrope_section_scales_the_checkpoints():
    assert _real_mrope_section(128) == [16, 24, 24]
    assert _real_mrope_section(16) == [2, 3, 3]
    assert all(min(_real_mrope_section(d)) >= 1 and sum(_real_mrope_section(d)) == d // 2 for d in (6, 8, 12, 32))
    with pytest.raises(ValueError, match="too small"):
        _real_mrope_section(4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_models_hold_the_rounded_float32_weights(dtype):
    ref, _ = build_tiny("qwen2-vl")
    half, _ = build_tiny("qwen2-vl", dtype=dtype)
    want = getattr(torch, dtype)
    for (k, a), (k2, b) in zip(ref.state_dict().items(), half.state_dict().items()):
        assert k == k2 and b.dtype == want and torch.equal(a.to(want), b), k


def test_unknown_shape_and_dtype_are_named():
    with pytest.raises(ValueError, match="unknown tiny shape 'huge'.*default, real"):
        build_tiny("llava", shape="huge")
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        build_tiny("llava", dtype="fp8")


def test_mixed_images_sizes_modes_and_determinism():
    imgs = tiny_images(8, mixed=True)
    assert [(i.size, i.mode) for i in imgs] == [(MIXED_SIZES[k % 4], MIXED_MODES[k % 4]) for k in range(8)]
    again = tiny_images(8, mixed=True)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(imgs, again))
    assert imgs[2].getextrema()[3][0] < 255  # RGBA carries a real alpha channel
    assert len(imgs[3].getpalette()) // 3 <= 64
    # the default call is unchanged: RGB squares
    assert {(i.size, i.mode) for i in tiny_images(3, size=84)} == {((84, 84), "RGB")}


def test_mixed_images_give_qwen_four_visual_token_counts():
    s = tiny_session("qwen2.5-vl", shape="real")
    imgs = [i.convert("RGB") for i in tiny_images(4, mixed=True)]
    grids = s.processor.image_processor(images=imgs, return_tensors="pt")["image_grid_thw"]
    assert (grids.prod(-1) // 4).tolist() == [4, 12, 15, 10]


def test_test_device_from_environment(monkeypatch):
    monkeypatch.delenv("HALLUFIX_TEST_DEVICE", raising=False)
    assert device_for_tests() == "cpu"
    monkeypatch.setenv("HALLUFIX_TEST_DEVICE", "cuda:1")
    assert device_for_tests() == "cuda:1"


def _gen(ids, logits):
    return Generation(text="", token_ids=torch.tensor(ids), logits=torch.tensor(logits, dtype=torch.float32))


def test_same_answers_rule():
    atol = BATCH_ATOL["bfloat16"]
    single = _gen([0, 1], [[1.0, 0.5, 0.0], [0.0, 1.0, 0.2]])
    assert_same_answers(_gen([0, 1], [[1.01, 0.5, 0.0], [0.0, 0.99, 0.2]]), single, atol)
    with pytest.raises(AssertionError, match="differ from one-at-a-time by 0.1"):
        assert_same_answers(_gen([0, 1], [[1.1, 0.5, 0.0], [0.0, 1.0, 0.2]]), single, atol)
    # a flip at a tie within the dtype's resolution ends the comparison; a decisive flip fails
    tied = _gen([0, 1], [[1.0, 0.99, 0.0], [0.0, 1.0, 0.2]])
    assert_same_answers(_gen([1, 2], [[0.99, 1.0, 0.0], [9.0, 9.0, 9.0]]), tied, atol)
    # logits within tolerance, yet another token (a logits processor chose it): decisive in the single run
    with pytest.raises(AssertionError, match="batching changed a decisive answer"):
        assert_same_answers(_gen([0, 2], [[1.0, 0.5, 0.0], [0.0, 1.0, 0.2]]), single, atol)
    with pytest.raises(AssertionError, match="tokens"):
        assert_same_answers(_gen([0], [[1.0, 0.5, 0.0]]), single, atol)


def test_configured_points_read_the_family_preset():
    """contrast's LLaVA preset names layers up to 28: in range on the 32-layer checkpoint, out of range on a
    24-layer model, which the contract's preset check reports."""
    from dataclasses import replace

    llava = REAL_MODEL_INFO["llava"]
    layers = {p.layer for p in configured_points("contrast", llava) if p.layer is not None}
    assert max(layers) == 28
    shallow = replace(llava, num_layers=24)
    try:
        pts = configured_points("contrast", shallow)
    except ValueError:
        return  # a method may refuse a preset that does not fit; then the contract sees the error
    assert any(p.layer is not None and p.layer >= 24 for p in pts)



class _NumpyInHook:
    """Converts a model-device tensor to NumPy inside a hook: works on a CPU, raises on a GPU."""

    name = "planted-numpy"

    @hookimpl
    def hallufix_configure(self, model):
        return points.attn_bias([0])

    @hookimpl
    def hallufix_attn_bias(self, event):
        event.visual_keys.numpy()


def test_contract_real_runs_catch_a_planted_numpy():
    from hallufix.intercept.strict import DeviceMisuseError
    from hallufix.testing.real import RealInputsContract

    if device_for_tests() != "cpu":
        pytest.skip("strict device mode simulates a GPU on CPU test devices; a GPU raises by itself")

    class Probe(RealInputsContract):
        method, active = _NumpyInHook(), []

    with pytest.raises(DeviceMisuseError):
        Probe()._run_real("llava", "float32", "active")
