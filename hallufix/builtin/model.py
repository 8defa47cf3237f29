"""The built-in model's architecture and processor: the real ``LlavaForConditionalGeneration`` with a small CLIP
vision tower (64x64 images, 8x8 patches -> 64 visual tokens on an 8x8 grid) and a small Llama decoder (8 layers,
hidden 128, 4 heads, MLP 512) over the shapes world's word-level vocabulary."""
from __future__ import annotations

import torch

from hallufix.builtin.language import CHAT_TEMPLATE, build_tokenizer
from hallufix.builtin.world import IMAGE_SIZE

PATCH = 8
N_VISUAL = (IMAGE_SIZE // PATCH) ** 2
ARCH = dict(text_layers=8, text_hidden=128, text_heads=4, text_mlp=512, vision_layers=4, vision_hidden=128,
            vision_heads=4, vision_mlp=512)


def build_processor():
    """``LlavaProcessor`` (PIL image processor, word-level tokenizer, the chat template)."""
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    ip = LlavaImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE,
                                                                              "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=ip, tokenizer=build_tokenizer(), patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def build_model(tokenizer, seed: int = 0, arch: dict | None = None):
    """A freshly initialised model (deterministic under ``seed``)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    a = {**ARCH, **(arch or {})}
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=a["vision_hidden"],
                           intermediate_size=a["vision_mlp"], num_hidden_layers=a["vision_layers"],
                           num_attention_heads=a["vision_heads"], image_size=IMAGE_SIZE, patch_size=PATCH,
                           projection_dim=a["vision_hidden"]),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=a["text_hidden"],
                         intermediate_size=a["text_mlp"], num_hidden_layers=a["text_layers"],
                         num_attention_heads=a["text_heads"], num_key_value_heads=a["text_heads"],
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=N_VISUAL,
        vision_feature_layer=-1, vision_feature_select_strategy="default")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa")
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
