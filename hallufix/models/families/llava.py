"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP patches, ``(image_size/patch)^2`` visual tokens on a fixed
raster grid, expanded in place of ``<image>``. The built-in shapes model (:mod:`hallufix.builtin`) is a checkpoint
of this family (aliases in :mod:`hallufix.models.registry`)."""
from __future__ import annotations

from hallufix.models.families.base import Adapter, _bicubic
from hallufix.models.families.spec import Capabilities, Family

#: ``"USER: <image>\n{Q} ASSISTANT:"``
LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
CAPABILITIES = Capabilities(spatial_grid=True, multi_image=True, token_to_patch=False)


class LlavaAdapter(Adapter):
    """LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP patches, ``(image_size/patch)^2`` tokens, raster grid."""

    family = "llava"
    capabilities = CAPABILITIES

    def visual_tokens_per_image(self, model) -> int:
        g = self.fixed_grid(model)
        return g[0] * g[1]

    def fixed_grid(self, model) -> tuple[int, int]:
        vc = model.config.vision_config
        n = vc.image_size // vc.patch_size
        return (n, n)

    def model_view(self, processor, image, grid):
        """CLIP-style preprocessing: resize the shortest edge, then center-crop (when the processor crops)."""
        ip = processor.image_processor
        size, crop = getattr(ip, "size", None) or {}, getattr(ip, "crop_size", None) or {}
        image = image.convert("RGB")
        if "shortest_edge" in size:
            s = int(size["shortest_edge"])
            w, h = image.size
            scale = s / min(w, h)
            image = image.resize((max(s, round(w * scale)), max(s, round(h * scale))), _bicubic())
        elif "height" in size:
            image = image.resize((int(size["width"]), int(size["height"])), _bicubic())
        if getattr(ip, "do_center_crop", False) and crop:
            cw, ch = int(crop["width"]), int(crop["height"])
            w, h = image.size
            left, top = (w - cw) // 2, (h - ch) // 2
            image = image.crop((left, top, left + cw, top + ch))
        return image

    def image_grid(self, processor, image):
        ip = processor.image_processor
        crop = getattr(ip, "crop_size", None) or {}
        size = int(crop.get("height") or (getattr(ip, "size", None) or {}).get("shortest_edge"))
        return (size // processor.patch_size, size // processor.patch_size)

    def cell_index(self, processor, image, grid):
        """Shortest edge resized, then centre-cropped: pixels outside the crop map to -1."""
        import numpy as np

        ip = processor.image_processor
        W, H = image.size
        short = int((getattr(ip, "size", None) or {}).get("shortest_edge") or min(W, H))
        crop = getattr(ip, "crop_size", None) or {}
        scale = short / min(W, H)
        rw, rh = max(short, round(W * scale)), max(short, round(H * scale))
        cw, ch = (int(crop.get("width") or rw), int(crop.get("height") or rh)) if getattr(ip, "do_center_crop",
                                                                                          False) else (rw, rh)
        left, top = (rw - cw) // 2, (rh - ch) // 2
        vx = (np.arange(W) + 0.5) * rw / W - left
        vy = (np.arange(H) + 0.5) * rh / H - top
        cols = np.floor(vx * grid[1] / cw).astype(int)
        rows = np.floor(vy * grid[0] / ch).astype(int)
        valid = (rows[:, None] >= 0) & (rows[:, None] < grid[0]) & (cols[None, :] >= 0) & (cols[None, :] < grid[1])
        return np.where(valid, rows[:, None] * grid[1] + cols[None, :], -1)


def build_tiny_llava(image_size, *, shape="default", num_query_tokens=None, **dims):
    """Tiny ``LlavaForConditionalGeneration`` (CLIP tower: 2 layers, width 32) + ``LlavaProcessor``."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    from hallufix.models.tiny import PATCH, _text_config, build_tokenizer

    tok = build_tokenizer("llava")
    ip = LlavaImageProcessorPil(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    tok = proc.tokenizer
    cfg = LlavaConfig(vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
                                         patch_size=PATCH, projection_dim=32),
                      text_config=dict(model_type="llama", **_text_config(tok, **dims)),
                      image_token_index=tok.convert_tokens_to_ids("<image>"),
                      image_seq_length=(image_size // PATCH) ** 2, vision_feature_layer=-2,
                      vision_feature_select_strategy="default")
    return LlavaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32), proc


FAMILY = Family(
    name="llava", display_name="LLaVA-1.5", model_types={"llava": "LlavaForConditionalGeneration"},
    adapter=LlavaAdapter, capabilities=CAPABILITIES, chat_template=LLAVA_TEMPLATE, tiny=build_tiny_llava,
    aliases={"llava-1.5": "llava-hf/llava-1.5-7b-hf", "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
             "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf"},
    processor_classes=("LlavaProcessor",),
    tiny_real=dict(num_layers=32, hidden_size=32 * 8, num_heads=32, num_kv_heads=32),  # LLaVA-1.5-7B
    tokenizer_kwargs={"image_token": "<image>", "padding_side": "left"})
