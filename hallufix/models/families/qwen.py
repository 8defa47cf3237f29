"""Qwen2-VL and Qwen2.5-VL: one module, since they share the adapter, chat template and processor (their
processors differ only in the video part, which hallufix does not use) and differ in the vision tower.
Variable grids from ``image_grid_thw`` after the ``merge x merge`` merge, between ``<|vision_start|>`` and
``<|vision_end|>``."""
from __future__ import annotations

from hallufix.models.families.base import Adapter, _bicubic
from hallufix.models.families.spec import Capabilities, Family

#: ``"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{Q}<|im_end|>\n<|im_start|>assistant\n"``
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CAPABILITIES = Capabilities(spatial_grid=True, multi_image=True, token_to_patch=False)
#: The checkpoints' ``mrope_section`` (Qwen2-VL-7B and Qwen2.5-VL-7B, head_dim 128): t/h/w rotary pairs.
REAL_MROPE_SECTION = (16, 24, 24)
PROCESSOR_CLASSES = ("Qwen2VLImageOnlyProcessor", "Qwen2VLProcessor", "Qwen2_5_VLProcessor")
TOKENIZER_KWARGS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                    "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>",
                    "padding_side": "left"}


class QwenAdapter(Adapter):
    """Qwen2-VL / Qwen2.5-VL: variable grids from ``image_grid_thw`` after the ``merge x merge`` merge."""

    family = "qwen2-vl"
    capabilities = CAPABILITIES

    def __init__(self, family: str = "qwen2-vl"):
        self.family = family

    def grids(self, model, inputs: dict, images: list[list]) -> list[list[tuple[int, int] | None]]:
        merge = model.config.vision_config.spatial_merge_size
        thw = inputs["image_grid_thw"].tolist()
        out, k = [], 0
        for row in images:
            cells = []
            for _ in row:
                t, h, w = thw[k]
                cells.append((t * h // merge, w // merge))
                k += 1
            out.append(cells)
        return out

    def image_grid(self, processor, image):
        thw = processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")["image_grid_thw"][0]
        merge = int(processor.image_processor.merge_size)
        return (int(thw[1]) // merge, int(thw[2]) // merge)

    def model_view(self, processor, image, grid):
        """Qwen resizes to multiples of ``patch * merge`` (28 px): one LM token covers one 28x28 cell."""
        ip = processor.image_processor
        cell = int(getattr(ip, "patch_size", 14)) * int(getattr(ip, "merge_size", 2))
        return image.convert("RGB").resize((grid[1] * cell, grid[0] * cell), _bicubic())


def load_processor(folder):
    """:class:`~hallufix.models.families.qwen_processor.Qwen2VLImageOnlyProcessor` from the folder's image
    processor and tokenizer (a real checkpoint's ``Qwen2VLProcessor`` would need torchvision)."""
    from hallufix.models.families.qwen_processor import Qwen2VLImageOnlyProcessor

    return Qwen2VLImageOnlyProcessor.from_pretrained(str(folder), local_files_only=True)


def _mrope_section(head_dim: int) -> list[int]:
    """t/h/w rotary split summing to ``head_dim // 2``: h = w = ``head_dim // 4``, t = the rest (16 -> [0, 4, 4]).

    Kept as first shipped (other tests' random-weight expectations depend on it); a single image has a constant
    temporal index, so an empty t section changes nothing structural."""
    quarter = head_dim // 4
    return [head_dim // 2 - 2 * quarter, quarter, quarter]


def _real_mrope_section(head_dim: int) -> list[int]:
    """:data:`REAL_MROPE_SECTION` scaled to ``head_dim // 2`` pairs, every section at least 1 (so text and image
    positions exercise all three axes as in the checkpoints), the rounding remainder on h then w
    (8 -> [1, 2, 1], 16 -> [2, 3, 3], 128 -> [16, 24, 24])."""
    half, total = head_dim // 2, sum(REAL_MROPE_SECTION)
    if half < 3:
        raise ValueError(f"head_dim {head_dim} is too small for a three-axis mrope_section (needs >= 6)")
    sec = [max(1, half * s // total) for s in REAL_MROPE_SECTION]
    i = 1
    while sum(sec) < half:
        sec[i] += 1
        i = 2 if i == 1 else 1
    while sum(sec) > half:
        sec[sec.index(max(sec))] -= 1
    return sec


def _qwen_common(image_size, shape, real_mrope=False):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from hallufix.models.families.qwen_processor import Qwen2VLImageOnlyProcessor
    from hallufix.models.tiny import PATCH, _text_config, build_tokenizer

    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": image_size * image_size,
                                        "longest_edge": 4 * image_size * image_size},
                                  patch_size=PATCH, temporal_patch_size=2, merge_size=2)
    proc = Qwen2VLImageOnlyProcessor(image_processor=ip, tokenizer=build_tokenizer("qwen2-vl"),
                                     chat_template=QWEN_TEMPLATE)
    tok = proc.tokenizer
    head_dim = shape["hidden_size"] // shape["num_heads"]
    section = _real_mrope_section(head_dim) if real_mrope else _mrope_section(head_dim)
    rope = dict(rope_type="default", mrope_section=section, rope_theta=1e4)
    text = _text_config(tok, **shape, rope_parameters=rope)
    ids = dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
               video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    return proc, text, ids


def build_tiny_qwen2(image_size, *, shape="default", num_query_tokens=None, **dims):
    """Tiny ``Qwen2VLForConditionalGeneration`` (ViT depth 2, width 32) + the image-only processor."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from hallufix.models.tiny import PATCH

    proc, text, ids = _qwen_common(image_size, dims, real_mrope=shape == "real")
    # Qwen2-VL vision: embed_dim = ViT width, hidden_size = merger output = LM width.
    vision = dict(depth=2, embed_dim=32, hidden_size=dims["hidden_size"], num_heads=2, mlp_ratio=2,
                  patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    return Qwen2VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32), proc


def build_tiny_qwen25(image_size, *, shape="default", num_query_tokens=None, **dims):
    """Tiny ``Qwen2_5_VLForConditionalGeneration`` (windowed ViT depth 4, width 32, full attention in blocks 1
    and 3) + the image-only processor."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from hallufix.models.tiny import PATCH

    proc, text, ids = _qwen_common(image_size, dims, real_mrope=shape == "real")
    # Qwen2.5-VL vision: hidden_size = ViT width, out_hidden_size = LM width.
    vision = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=dims["hidden_size"],
                  patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[1, 3])
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    return Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa",
                                                           dtype=torch.float32), proc


_COMMON = dict(capabilities=CAPABILITIES, chat_template=QWEN_TEMPLATE, processor_classes=PROCESSOR_CLASSES,
               load_processor=load_processor, tokenizer_kwargs=TOKENIZER_KWARGS, preset_names=("qwen",),
               # Qwen2-VL-7B and Qwen2.5-VL-7B: 28 layers, 28 heads over 4 KV heads
               tiny_real=dict(num_layers=28, hidden_size=28 * 8, num_heads=28, num_kv_heads=4))
QWEN2_VL = Family(name="qwen2-vl", display_name="Qwen2-VL",
                  model_types={"qwen2_vl": "Qwen2VLForConditionalGeneration"},
                  adapter=lambda: QwenAdapter("qwen2-vl"), tiny=build_tiny_qwen2,
                  aliases={"qwen2-vl": "Qwen/Qwen2-VL-7B-Instruct"}, **_COMMON)
QWEN25_VL = Family(name="qwen2.5-vl", display_name="Qwen2.5-VL",
                   model_types={"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"},
                   adapter=lambda: QwenAdapter("qwen2.5-vl"), tiny=build_tiny_qwen25,
                   aliases={"qwen-vl": "Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5-vl": "Qwen/Qwen2.5-VL-7B-Instruct"},
                   **_COMMON)
