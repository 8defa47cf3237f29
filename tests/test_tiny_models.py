"""The model-construction layer: tiny random models of the four real classes, their processors and chat templates,
and the offline loader (save -> load_pretrained round trip, missing-model error)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hallufix.models.tiny import TINY_FAMILIES, build_tiny, save_tiny

QUESTIONS = ("is there a cat ?", "what colour is the large object on the left side of the picture ?")
EXPECTED_PROMPT = {
    "llava": "USER: <image>\n{q} ASSISTANT:",
    "qwen2-vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\n<|im_start|>assistant\n",
    "qwen2.5-vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\n<|im_start|>assistant\n",
    "instructblip": "{q}",
}
CLASSES = {"llava": "LlavaForConditionalGeneration", "qwen2-vl": "Qwen2VLForConditionalGeneration",
           "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration", "instructblip": "InstructBlipForConditionalGeneration"}
GEN = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)


def _image(seed: int = 0, size=(56, 56)) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr)


def _prompt(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _inputs(processor, questions, images=None):
    images = images or [_image(i) for i in range(len(questions))]
    return processor(images=images, text=[_prompt(processor, q) for q in questions], return_tensors="pt",
                     padding=True)


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def tiny(request):
    torch.set_num_threads(1)
    model, processor = build_tiny(request.param)
    return request.param, model, processor


def test_real_classes_and_shapes(tiny):
    family, model, processor = tiny
    assert type(model).__name__ == CLASSES[family]
    assert not model.training and next(model.parameters()).dtype == torch.float32
    text = model.config.get_text_config()
    dims = (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.num_key_value_heads)
    assert dims == (4, 64, 4, 2)
    assert text._attn_implementation == "sdpa"
    tok = processor.tokenizer
    assert text.vocab_size >= len(tok) and tok.padding_side == "left"
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (tok.bos_token_id, tok.eos_token_id,
                                                                           tok.pad_token_id)
    image_token = {"llava": "<image>", "instructblip": "<image>"}.get(family, "<|image_pad|>")
    assert model.config.image_token_id == tok.convert_tokens_to_ids(image_token)
    if family == "instructblip":
        assert model.config.num_query_tokens == processor.num_query_tokens == 8


def test_build_is_deterministic(tiny):
    family, model, _ = tiny
    torch.manual_seed(123)
    before = torch.rand(3)
    again, _ = build_tiny(family)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), before), "build_tiny must leave the global RNG alone"
    ref, new = model.state_dict(), again.state_dict()
    assert ref.keys() == new.keys()
    assert all(torch.equal(ref[k], new[k]) for k in ref)
    other, _ = build_tiny(family, seed=1)
    assert any(not torch.equal(ref[k], v) for k, v in other.state_dict().items())


def test_chat_template(tiny):
    family, _, processor = tiny
    assert _prompt(processor, "is there a cat ?") == EXPECTED_PROMPT[family].format(q="is there a cat ?")


def test_generate_single(tiny):
    family, model, processor = tiny
    inputs = _inputs(processor, QUESTIONS[:1])
    out = model.generate(**inputs, **GEN)
    # Every family returns prompt + new tokens (InstructBLIP's generate override included).
    assert out.shape == (1, inputs["input_ids"].shape[1] + 4)
    assert torch.equal(out[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_generate_left_padded_batch(tiny):
    family, model, processor = tiny
    images = [_image(0), _image(1)]
    batch = _inputs(processor, QUESTIONS, images)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] == 2 and mask[0].sum() < mask[1].sum(), "first prompt is the shorter one"
    n_pad = int((mask[0] == 0).sum())
    first = 8 if family == "instructblip" else 0  # InstructBLIP: query placeholders stay in front of the padding
    assert mask[0, first:first + n_pad].eq(0).all() and mask[0, first + n_pad:].eq(1).all()
    assert ids[0, first:first + n_pad].eq(processor.tokenizer.pad_token_id).all()
    out = model.generate(**batch, **GEN, output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape == (2, ids.shape[1] + 4)
    for row in range(2):  # padding changes nothing: each row's first-step logits equal its unpadded run
        single = _inputs(processor, QUESTIONS[row:row + 1], images[row:row + 1])
        ref = model.generate(**single, **GEN, output_logits=True, return_dict_in_generate=True)
        torch.testing.assert_close(out.logits[0][row], ref.logits[0][0], atol=1e-4, rtol=1e-4)


def test_visual_token_count(tiny):
    family, model, processor = tiny
    cfg = model.config
    for size in ((56, 56), (400, 300)):
        inputs = _inputs(processor, QUESTIONS[:1], [_image(0, size)])
        vis = inputs["input_ids"] == cfg.image_token_id
        if family == "llava":
            expected = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
            assert expected == cfg.image_seq_length == 16
        elif family.startswith("qwen"):
            thw = inputs["image_grid_thw"]
            expected = int(thw.prod()) // cfg.vision_config.spatial_merge_size ** 2
            assert inputs["pixel_values"].shape[0] == int(thw.prod())
            assert inputs["mm_token_type_ids"].bool().equal(vis)
            assert thw.tolist() == ([[1, 4, 4]] if size == (56, 56) else [[1, 6, 8]])
        else:
            expected = cfg.num_query_tokens
            assert vis[0, :expected].all()  # placeholders come first, then BOS
            assert inputs["input_ids"][0, expected] == processor.tokenizer.bos_token_id
        assert int(vis.sum()) == expected


def test_save_load_roundtrip(tiny, tmp_path_factory):
    from hallufix.models.loading import family_of, load_pretrained

    family, model, processor = tiny
    folder = save_tiny(family, tmp_path_factory.mktemp(family.replace(".", "_")))
    loaded, proc2 = load_pretrained(str(folder))
    assert type(loaded) is type(model) and type(proc2) is type(processor)
    assert family_of(loaded) == family_of(model) == family
    assert proc2.tokenizer.padding_side == "left"
    assert _prompt(proc2, "is there a cat ?") == _prompt(processor, "is there a cat ?")
    a, b = _inputs(processor, QUESTIONS), _inputs(proc2, QUESTIONS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref, new = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(ref[k], new[k]) for k in ref)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**b).logits, model(**a).logits, atol=0, rtol=0)
    gen = dict(GEN, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(loaded.generate(**b, **gen), model.generate(**a, **gen))


def test_qwen_processor_reload_needs_our_loader(tmp_path):
    from transformers import AutoProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from hallufix.models.processors import Qwen2VLImageOnlyProcessor, load_processor

    _, processor = build_tiny("qwen2-vl")
    processor.save_pretrained(tmp_path)
    # AutoProcessor does not know the class name and silently returns the bare tokenizer.
    assert not isinstance(AutoProcessor.from_pretrained(tmp_path), Qwen2VLImageOnlyProcessor)
    for reloaded in (load_processor(tmp_path), Qwen2VLImageOnlyProcessor.from_pretrained(tmp_path)):
        assert isinstance(reloaded, Qwen2VLImageOnlyProcessor)
        assert isinstance(reloaded.image_processor, Qwen2VLImageProcessorPil)
        a, b = _inputs(processor, QUESTIONS), _inputs(reloaded, QUESTIONS)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_model_raises(tmp_path):
    from hallufix.models.loading import ModelNotAvailableError, load_pretrained

    with pytest.raises(ModelNotAvailableError) as info:
        load_pretrained("some-org/not-cached-model", allow_download=False)
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert "some-org/not-cached-model" in message and "--model /path/to/folder" in message
    assert "hf download some-org/not-cached-model" in message
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        load_pretrained(str(tmp_path))


def test_hub_downloads_follow_the_offline_setting(monkeypatch):
    """Like ``from_pretrained``: a hub id downloads unless HF_HUB_OFFLINE is set; an explicit choice wins."""
    from huggingface_hub import constants

    from hallufix.models.loading import downloads_allowed

    monkeypatch.setattr(constants, "is_offline_mode", lambda: True, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert downloads_allowed(None) is False and downloads_allowed(True) is True
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert downloads_allowed(None) is True and downloads_allowed(False) is False


def test_family_of_rejects_unknown():
    from types import SimpleNamespace

    from hallufix.models.loading import family_of

    assert family_of(SimpleNamespace(model_type="qwen2_5_vl")) == "qwen2.5-vl"
    with pytest.raises(ValueError, match="unsupported model_type 'bert'"):
        family_of(SimpleNamespace(config=SimpleNamespace(model_type="bert")))


def test_unknown_family():
    with pytest.raises(ValueError, match="tiny families"):
        build_tiny("gpt2")


def test_instructblip_qformer_text_stays_right_padded(tmp_path):
    """A checkpoint whose LM tokenizer saved padding_side="left" must not left-pad the Q-Former text as well."""
    import json

    from hallufix.models.processors import load_processor

    folder = save_tiny("instructblip", tmp_path)
    cfg_file = folder / "tokenizer_config.json"
    cfg_file.write_text(json.dumps(dict(json.loads(cfg_file.read_text()), padding_side="left")))
    processor = load_processor(folder)
    batch = _inputs(processor, QUESTIONS)
    assert processor.tokenizer.padding_side == "left" and batch["attention_mask"][0, 8] == 0
    qmask = batch["qformer_attention_mask"]
    assert qmask[0, 0] == 1 and qmask[0, -1] == 0
