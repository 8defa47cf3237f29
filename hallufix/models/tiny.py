"""Tiny random models of the four real classes, with locally built tokenizers and processors (no hub).

``build_tiny(family, ...)`` returns ``(model, processor)``: a real ``LlavaForConditionalGeneration``,
``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration`` or
``InstructBlipForConditionalGeneration`` built from a config (float32, SDPA, eval mode), with weights that are
bitwise identical for the same ``seed``, and the family's real processor. ``save_tiny`` writes the standard
``save_pretrained`` layout, which :func:`hallufix.models.loading.load_pretrained` reads like any checkpoint.

Default shapes (4 decoder layers, hidden 64, 4 query heads over 2 KV heads, 56 px images) give 16 visual tokens
for LLaVA (4x4 grid), 4 for Qwen at 56 px (2x2 after the merge; larger images give more), 8 query tokens for
InstructBLIP; each model builds in well under a second.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

TINY_FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")

_WORDS = ("is there a an the cat dog bird car person in on of image picture photo what colour color large small "
          "object left right side top bottom describe how many are please yes no one two three four red green "
          "blue yellow white black circle square star and with answer question single word phrase using").split()
_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
             "<|video_pad|>", "<|im_start|>", "<|im_end|>"]


@lru_cache(maxsize=None)
def _bpe_json() -> str:
    """A byte-level BPE tokenizer trained once per process on a fixed corpus (deterministic), as JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(_WORDS[i:] + _WORDS[:i]) for i in range(len(_WORDS))] * 4
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=_SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", 1)])
    return tok.to_str()


def build_tokenizer(family: str):
    """A ``PreTrainedTokenizerFast`` for ``family`` (left padding; Qwen's special tokens named; InstructBLIP's
    LM tokenizer deliberately has no ``image_token`` attribute, see transformers.md G6)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    extra = {}
    if family == "llava":
        extra = {"image_token": "<image>"}
    elif family.startswith("qwen"):
        extra = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                 "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_bpe_json()), bos_token="<s>",
                                  eos_token="</s>", pad_token="<pad>", unk_token="<unk>", **extra)
    tok.padding_side = "left"
    return tok


def _text_config(tok, num_layers, hidden_size, num_heads, num_kv_heads, intermediate_size, vocab_size, **extra):
    return dict(vocab_size=max(vocab_size or 0, len(tok)), hidden_size=hidden_size,
                intermediate_size=intermediate_size or 2 * hidden_size, num_hidden_layers=num_layers,
                num_attention_heads=num_heads, num_key_value_heads=num_kv_heads or max(1, num_heads // 2),
                max_position_embeddings=4096, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, **extra)


def build_tiny(family: str, *, num_layers: int = 4, hidden_size: int = 64, num_heads: int = 4,
               num_kv_heads: int | None = None, intermediate_size: int | None = None, image_size: int = 56,
               vocab_size: int | None = None, seed: int = 0):
    """A tiny random model of ``family`` and its processor: see the module docstring."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown family '{family}'; tiny families: {', '.join(TINY_FAMILIES)}")
    builder = {"llava": _llava, "qwen2-vl": _qwen2, "qwen2.5-vl": _qwen25, "instructblip": _instructblip}[family]
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model, processor = builder(num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                                   num_kv_heads=num_kv_heads, intermediate_size=intermediate_size,
                                   image_size=image_size, vocab_size=vocab_size)
    finally:
        torch.random.set_rng_state(state)
    return model.eval(), processor


def _llava(image_size, **shape):
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    from hallufix.models.processors import LLAVA_TEMPLATE

    tok = build_tokenizer("llava")
    ip = LlavaImageProcessorPil(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    n = (image_size // 14) ** 2
    cfg = LlavaConfig(vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
                                         patch_size=14, projection_dim=32),
                      text_config=dict(model_type="llama", **_text_config(tok, **shape)),
                      image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=n,
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    return LlavaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc


def _qwen_common(image_size, shape):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from hallufix.models.processors import QWEN_TEMPLATE, Qwen2VLImageOnlyProcessor

    tok = build_tokenizer("qwen")
    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": image_size * image_size,
                                        "longest_edge": 4 * image_size * image_size},
                                  patch_size=14, temporal_patch_size=2, merge_size=2)
    proc = Qwen2VLImageOnlyProcessor(image_processor=ip, tokenizer=tok, chat_template=QWEN_TEMPLATE)
    head_dim = shape["hidden_size"] // shape["num_heads"]
    quarter = head_dim // 4
    rope = dict(rope_type="default", mrope_section=[head_dim // 2 - 2 * quarter, quarter, quarter],
                rope_theta=1e4)
    text = _text_config(tok, **shape, rope_parameters=rope)
    ids = dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
               video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    return tok, proc, text, ids


def _qwen2(image_size, **shape):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok, proc, text, ids = _qwen_common(image_size, shape)
    cfg = Qwen2VLConfig(text_config=text, vision_config=dict(depth=2, embed_dim=32, hidden_size=shape["hidden_size"],
                                                             num_heads=2, mlp_ratio=2, patch_size=14,
                                                             spatial_merge_size=2, temporal_patch_size=2), **ids)
    return Qwen2VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc


def _qwen25(image_size, **shape):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok, proc, text, ids = _qwen_common(image_size, shape)
    cfg = Qwen2_5_VLConfig(text_config=text,
                           vision_config=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2,
                                              out_hidden_size=shape["hidden_size"], patch_size=14,
                                              spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                                              fullatt_block_indexes=[1, 3]), **ids)
    return Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc


def _instructblip(image_size, **shape):
    from transformers import (InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor,
                              PreTrainedTokenizerFast)
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
    from tokenizers import Tokenizer

    from hallufix.models.processors import INSTRUCTBLIP_TEMPLATE

    tok = build_tokenizer("instructblip")
    qtok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_bpe_json()), pad_token="<pad>",
                                   unk_token="<unk>")
    ip = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    proc = InstructBlipProcessor(image_processor=ip, tokenizer=tok, qformer_tokenizer=qtok, num_query_tokens=8,
                                 chat_template=INSTRUCTBLIP_TEMPLATE)
    image_id = proc.tokenizer.convert_tokens_to_ids("<image>")
    cfg = InstructBlipConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                num_attention_heads=2, image_size=image_size, patch_size=14),
                             qformer_config=dict(vocab_size=len(qtok), hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=64,
                                                 max_position_embeddings=128, cross_attention_frequency=1),
                             text_config=dict(model_type="llama", **_text_config(proc.tokenizer, **shape)),
                             num_query_tokens=8, image_token_index=image_id)
    return InstructBlipForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc


def save_tiny(family: str, path: str | Path, **kw) -> Path:
    """Build and save model + processor in the ``save_pretrained`` layout; returns ``path``."""
    model, processor = build_tiny(family, **kw)
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
