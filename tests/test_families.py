"""The family registry (hallufix.models.families): every family's declared capabilities reach ModelInfo, the
Qwen families share their presets, the generic token-to-patch capture, and methods refuse by capability."""
from __future__ import annotations

import pytest
import torch

from hallufix.config import method_config, preset_path
from hallufix.layout import ModelInfo
from hallufix.models.families import FAMILIES, MODEL_TYPE_FAMILY, Capabilities, adapter_for, capabilities
from hallufix.testing.models import tiny_images, tiny_session

EXPECTED = {"llava": Capabilities(spatial_grid=True, multi_image=True, token_to_patch=False),
            "qwen2-vl": Capabilities(spatial_grid=True, multi_image=True, token_to_patch=False),
            "qwen2.5-vl": Capabilities(spatial_grid=True, multi_image=True, token_to_patch=False),
            "instructblip": Capabilities(spatial_grid=False, multi_image=False, token_to_patch=True, qformer=True)}


@pytest.mark.parametrize("family", list(EXPECTED))
def test_loaded_model_carries_its_family_capabilities(family):
    s = tiny_session(family)
    assert s.info.family == family == MODEL_TYPE_FAMILY[s.model.config.model_type]
    assert s.info.capabilities == EXPECTED[family] == FAMILIES[family].capabilities
    assert type(adapter_for(s.model)) is type(s.adapter)


def test_hand_built_model_info_gets_registered_or_generic_capabilities():
    info = dict(num_layers=4, num_heads=4, num_kv_heads=4, head_dim=8, hidden_size=32, image_token_id=4)
    assert ModelInfo(family="instructblip", **info).capabilities == EXPECTED["instructblip"]
    assert ModelInfo(family="instructblip", **info).display_name == "InstructBLIP"
    assert ModelInfo(family="someone-elses", **info).capabilities == capabilities("someone-elses") == Capabilities()
    own = Capabilities(spatial_grid=False, multi_image=True, token_to_patch=False)
    assert ModelInfo(family="llava", capabilities=own, **info).capabilities is own


@pytest.mark.parametrize("method", ["ara", "clva", "contrast", "fhi"])
def test_qwen_families_share_one_preset(method):
    from hallufix.plugins import discover

    cls = discover().get(method).load()
    a, b = preset_path(cls, "qwen2-vl"), preset_path(cls, "qwen2.5-vl")
    assert a == b and a.name == "qwen.yaml"
    assert method_config(cls, family="qwen2-vl") == method_config(cls, family="qwen2.5-vl")


def test_calibration_never_writes_into_a_shared_preset(tmp_path):
    from hallufix.cli.calibrate import preset_target
    from hallufix_fhi.method import FHI

    target, base = preset_target(FHI, "qwen2-vl", "Qwen/Qwen2-VL-7B-Instruct")
    assert target.name == "qwen2-vl.yaml" and base.name == "qwen.yaml"
    target, base = preset_target(FHI, "llava", "builtin")
    assert target == base and target.name == "builtin.yaml"
    assert preset_target(FHI, "llava", "builtin", str(tmp_path / "x.yaml")) == (tmp_path / "x.yaml", None)


def test_token_to_patch_capture_is_the_qformer_map_without_cls():
    s = tiny_session("instructblip")
    images, qs = tiny_images(2), ["is there a cat ?", "describe the picture"]
    run = s.start([])
    cap = run.capture(images, qs, layers=[1], token_to_patch=True)
    n_query, grid = s.model.config.num_query_tokens, (4, 4)  # 56 px / 14 px patches
    assert cap.patch_grid == grid and cap.token_to_patch.dtype == torch.float32
    assert cap.token_to_patch.shape == (2, n_query, grid[0] * grid[1])
    inputs = s.adapter.inputs(s.processor, [[im] for im in images], qs, s.device)
    with torch.inference_mode():
        full = s.adapter.qformer_cross_attention(s.model, inputs)  # (B, n_query, 1 + patches), rows sum to 1
    assert torch.equal(cap.token_to_patch, full[:, :, 1:].float())
    assert torch.allclose(full.sum(-1), torch.ones(2, n_query), atol=1e-5)


def test_token_to_patch_is_refused_where_not_declared():
    run = tiny_session("llava").start([])
    with pytest.raises(ValueError, match="declares no token-to-patch map"):
        run.capture(tiny_images(1), ["hi"], layers=[1], token_to_patch=True)


def test_methods_refuse_by_capability_not_by_family_name():
    """A LLaVA model described as having no spatial grid and one image per prompt is refused like InstructBLIP."""
    from hallufix.api import MethodRun
    from hallufix.plugins import activate

    info = ModelInfo(family="llava", num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128, hidden_size=4096,
                     image_token_id=32000, capabilities=Capabilities(spatial_grid=False, multi_image=False))

    class Stub:  # MethodRun reads only session.info while configuring
        pass

    stub = Stub()
    stub.info = info
    for plugins, ovr, match in [("contrast", {"contrast": ["variant=crop"]}, "needs a spatial token grid"),
                                ("ara", {"ara": ["mode=both"]}, "takes one"),
                                ("ara", {"ara": ["mode=replace"]}, "no spatial grid and no token-to-patch map")]:
        with pytest.raises(ValueError, match=match):
            MethodRun(stub, activate([plugins], family="llava", overrides=ovr))
