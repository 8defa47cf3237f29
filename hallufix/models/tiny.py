"""Tiny random models of the four real classes, with locally built tokenizers and processors (no hub).

``build_tiny(family, ...)`` returns ``(model, processor)``: a real ``LlavaForConditionalGeneration``,
``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration`` or
``InstructBlipForConditionalGeneration`` built from a config (float32, SDPA, eval mode), with weights that are
bitwise identical for the same ``seed``, and the family's real processor. ``save_tiny`` writes the standard
``save_pretrained`` layout, which :func:`hallufix.models.loading.load_pretrained` reads like any checkpoint.

Defaults (4 decoder layers, hidden 64, 4 query heads over 2 KV heads -> head_dim 16, 56 px images):

============  =======================================  =================================================
family        visual tokens per 56 px image            where they sit in ``input_ids``
============  =======================================  =================================================
llava         16 = (56 // 14)**2 (CLS dropped)         after ``USER: `` (``<image>`` expanded in place)
qwen2-vl      4  = grid_thw (1, 4, 4) // 2**2          between ``<|vision_start|>`` and ``<|vision_end|>``
qwen2.5-vl    4  (same processor)                      same
instructblip  8  = ``num_query_tokens``                positions ``[0, 8)`` of every row, *before* BOS and
                                                       before any left padding
============  =======================================  =================================================

Qwen images are resized to between ``image_size**2`` and ``4 * image_size**2`` pixels (multiples of 28), so
larger or non-square images give more tokens (e.g. 300x400 -> grid (1, 6, 8) -> 12 tokens). Vision towers: CLIP
(LLaVA, 2 layers, width 32), Qwen2-VL ViT (depth 2, width 32), Qwen2.5-VL windowed ViT (depth 4, width 32,
full attention in blocks 1 and 3), BLIP ViT + Q-Former (2 layers each, width 32).

The per-family builders live in the family modules (:mod:`hallufix.models.families`, ``Family.tiny``); this
module holds what they share (the BPE tokenizer, the LM config, the named shapes) and the entry points.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from hallufix.models.families import FAMILIES
from hallufix.models.families.instructblip import NUM_QUERY_TOKENS  # noqa: F401 (re-export)
from hallufix.models.families.qwen import REAL_MROPE_SECTION, _real_mrope_section  # noqa: F401 (re-export)

TINY_FAMILIES = tuple(FAMILIES)
PATCH = 14

_WORDS = ("is there a an the cat dog bird car person in on of image picture photo what colour color large small "
          "object left right side top bottom describe how many are please yes no one two three four red green "
          "blue yellow white black circle square star and with answer question single word phrase using "
          "USER ASSISTANT user assistant").split()
_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
             "<|video_pad|>", "<|im_start|>", "<|im_end|>"]


@lru_cache(maxsize=None)
def _bpe_json() -> str:
    """A byte-level BPE tokenizer (vocab 400, ids 0..10 = ``_SPECIALS`` in order: pad 0, BOS 1, EOS 2, unk 3,
    ``<image>`` 4, ...) trained once per process on a fixed word corpus (lower-case
    question words plus the chat roles); deterministic across processes."""
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
    """A fresh ``PreTrainedTokenizerFast`` for ``family`` over the cached BPE, padding on the left.

    LLaVA names ``image_token``; Qwen names image/video/vision-start/end tokens; InstructBLIP's LM tokenizer
    deliberately has *no* ``image_token`` attribute (its processor adds ``<image>`` itself)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    # named special tokens and, where the family allows, padding_side as a saved init kwarg (Family.tokenizer_kwargs)
    extra = dict(FAMILIES[family].tokenizer_kwargs)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_bpe_json()), bos_token="<s>",
                                  eos_token="</s>", pad_token="<pad>", unk_token="<unk>", **extra)
    tok.padding_side = "left"
    return tok


def _text_config(tok, num_layers, hidden_size, num_heads, num_kv_heads, intermediate_size, vocab_size, **extra):
    """LM config dict; ids and ``vocab_size >= len(tok)`` read from the tokenizer *after* the processor exists."""
    kv = num_kv_heads or max(1, num_heads // 2)
    if hidden_size % num_heads or num_heads % kv:
        raise ValueError(f"hidden_size {hidden_size} / num_heads {num_heads} / num_kv_heads {kv} do not divide")
    return dict(vocab_size=max(vocab_size or 0, len(tok)), hidden_size=hidden_size,
                intermediate_size=intermediate_size or 2 * hidden_size, num_hidden_layers=num_layers,
                num_attention_heads=num_heads, num_key_value_heads=kv, max_position_embeddings=4096,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                **extra)


#: Named shapes. ``default`` is the first shipped fixture (other tests' random-weight expectations depend on it,
#: keep it bitwise unchanged). ``real`` has the real 7B checkpoints' decoder depth, query heads, KV heads and
#: InstructBLIP query tokens at head_dim 8 (each family's ``Family.tiny_real``; LLaVA-1.5-7B: 32 layers, 32 heads
#: over 32 KV heads; Qwen2-VL-7B and Qwen2.5-VL-7B: 28 layers, 28 heads over 4 KV heads; InstructBLIP-Vicuna-7B:
#: 32 layers, 32 heads, 32 query tokens), so hidden sizes are 256 / 224 / 256 instead of 4096 / 3584 / 4096.
#: Vision towers stay tiny. The real shape never emits special tokens (see ``_silence_specials``).
SHAPES: dict[str, dict[str, dict]] = {
    "default": {f: dict(num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=None, num_query_tokens=8)
                for f in TINY_FAMILIES},
    "real": {f.name: dict(f.tiny_real) for f in FAMILIES.values()},
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_tiny(family: str, *, shape: str = "default", num_layers: int | None = None,
               hidden_size: int | None = None, num_heads: int | None = None, num_kv_heads: int | None = None,
               intermediate_size: int | None = None, image_size: int = 56, vocab_size: int | None = None,
               num_query_tokens: int | None = None, dtype: str | torch.dtype = torch.float32, seed: int = 0):
    """``(model, processor)``: a tiny random model of ``family`` (one of :data:`TINY_FAMILIES`), SDPA, eval mode,
    and its real processor with a chat template.

    ``shape`` names a row of :data:`SHAPES` (``"default"``: 4 layers, hidden 64, 4 heads over 2 KV heads;
    ``"real"``: the 7B checkpoints' depth and head counts at head_dim 8); explicit ``num_layers`` etc. override
    it. ``num_kv_heads=None`` means ``num_heads // 2`` (GQA in every family); pass ``num_kv_heads=num_heads`` for
    plain multi-head attention. ``image_size`` is the vision tower's input (LLaVA / InstructBLIP) or the Qwen
    minimum pixel side; ``vocab_size`` only raises the LM vocab above the tokenizer's 400;
    ``num_query_tokens`` is InstructBLIP's Q-Former query count (visual tokens per image).

    ``dtype`` (``float32``, ``bfloat16``, ``float16`` or a ``torch.dtype``): the model is built in float32 and
    cast, so a bf16/fp16 model holds exactly the rounded float32 weights of the same ``seed``. Weights depend only
    on ``seed`` and the shape (global RNG state is saved and restored). The model stays on the CPU."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown family '{family}'; tiny families: {', '.join(TINY_FAMILIES)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown tiny shape '{shape}'; shapes: {', '.join(SHAPES)}")
    dims = {"num_kv_heads": None, "num_query_tokens": 8, **SHAPES[shape][family]}
    given = dict(num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                 num_query_tokens=num_query_tokens)
    dims.update({k: v for k, v in given.items() if v is not None})
    if num_kv_heads is not None:
        dims["num_kv_heads"] = num_kv_heads
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    lm = dict(num_layers=dims["num_layers"], hidden_size=dims["hidden_size"], num_heads=dims["num_heads"],
              num_kv_heads=dims["num_kv_heads"], intermediate_size=intermediate_size, vocab_size=vocab_size)
    builder = FAMILIES[family].tiny  # each takes what it uses of shape / num_query_tokens
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = builder(image_size, shape=shape, num_query_tokens=dims["num_query_tokens"], **lm)
    if shape == "real":
        _silence_specials(model)
    return model.to(torch.float32).to(dtype).eval(), processor


def _silence_specials(model) -> None:
    """Zero the output rows of the special tokens (ids ``0 .. len(_SPECIALS) - 1``), so greedy answers are ordinary
    text as a trained model's are. A random model otherwise tends to repeat one token; at the real shapes Qwen2.5-VL
    repeats ``<|vision_start|>``, whose decoded text is empty, and answer-level tests would compare empty strings.
    The rows' logits are exactly 0, below the top of ~390 random logits (std ~0.3), so EOS is never chosen either:
    every answer runs to ``max_new_tokens``."""
    with torch.no_grad():
        model.get_output_embeddings().weight[: len(_SPECIALS)] = 0


def save_tiny(family: str, path: str | Path, **kw) -> Path:
    """Build ``build_tiny(family, **kw)`` and save model + processor into ``path`` (``save_pretrained`` layout:
    ``config.json``, ``model.safetensors``, ``generation_config.json``, ``processor_config.json``, tokenizer files,
    ``chat_template.jinja``, and ``qformer_tokenizer/`` for InstructBLIP); returns ``path``."""
    model, processor = build_tiny(family, **kw)
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
