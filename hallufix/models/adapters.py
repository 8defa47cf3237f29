"""One small adapter per model family: where the decoder is, how prompts and images become inputs, and where the
visual tokens sit on the image. Everything family-specific lives here, never in plugins or the core.
"""
from __future__ import annotations

import math

import torch

from hallufix.layout import ModelInfo, TokenLayout


class Adapter:
    """Family-independent behaviour; subclasses override what differs."""

    family = "generic"
    text_config_key = "text_config"
    multi_image = True

    # ---------------------------------------------------------------- structure
    def text_model(self, model):
        """The language model's decoder stack (``LlamaModel``, ``Qwen2VLTextModel``, ...)."""
        return model.get_decoder()

    def decoder_layers(self, model) -> list:
        return list(self.text_model(model).layers)

    def o_proj(self, layer):
        return layer.self_attn.o_proj

    def text_config(self, model):
        return getattr(model.config, self.text_config_key)

    def get_text_attn_implementation(self, model) -> str:
        return self.text_config(model)._attn_implementation

    def set_text_attn_implementation(self, model, name: str) -> None:
        model.set_attn_implementation({self.text_config_key: name})

    def image_token_id(self, model) -> int:
        cfg = model.config
        for attr in ("image_token_id", "image_token_index"):
            value = getattr(cfg, attr, None)
            if value is not None:
                return int(value)
        raise ValueError(f"{type(model).__name__}: config has no image token id")

    def model_info(self, model, name: str = "") -> ModelInfo:
        tc = self.text_config(model)
        heads = tc.num_attention_heads
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
        return ModelInfo(family=self.family, num_layers=tc.num_hidden_layers, num_heads=heads,
                         num_kv_heads=getattr(tc, "num_key_value_heads", None) or heads, head_dim=head_dim,
                         hidden_size=tc.hidden_size, image_token_id=self.image_token_id(model),
                         visual_tokens_per_image=self.visual_tokens_per_image(model), grid=self.fixed_grid(model),
                         name=name)

    def visual_tokens_per_image(self, model) -> int | None:
        return None

    def fixed_grid(self, model) -> tuple[int, int] | None:
        return None

    # ---------------------------------------------------------------- inputs
    def prompt(self, processor, question: str, n_images: int = 1) -> str:
        """The chat-formatted prompt for one question about ``n_images`` images."""
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def inputs(self, processor, images: list[list], questions: list[str], device) -> dict:
        """Processor inputs for a left-padded batch: ``images[row]`` is that row's list of PIL images."""
        n = {len(x) for x in images}
        if max(n) > 1 and not self.multi_image:
            raise ValueError(f"{self.family} takes one image per prompt; a method asked for {max(n)}")
        prompts = [self.prompt(processor, q, len(imgs)) for q, imgs in zip(questions, images)]
        processor.tokenizer.padding_side = "left"
        flat = [im for row in images for im in row]
        batch = processor(images=flat, text=prompts, padding=True, return_tensors="pt")
        return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def grids(self, model, inputs: dict, images: list[list]) -> list[list[tuple[int, int] | None]]:
        """Per row, per image: the ``(rows, cols)`` grid of its visual tokens."""
        grid = self.fixed_grid(model)
        return [[grid for _ in row] for row in images]

    def layout(self, model, inputs: dict, images: list[list]) -> TokenLayout:
        return TokenLayout.from_inputs(inputs["input_ids"], inputs.get("attention_mask"), self.image_token_id(model),
                                       self.grids(model, inputs, images))

    def model_view(self, processor, image, grid: tuple[int, int] | None):
        """The image as the vision tower sees it (after the processor's resize / crop), as a PIL image on which a
        map over ``grid`` cells aligns exactly. Default: the image processor's fixed square size."""
        ip = processor.image_processor
        size = getattr(ip, "size", None) or {}
        h = size.get("height") or size.get("shortest_edge") or image.height
        w = size.get("width") or size.get("shortest_edge") or image.width
        return image.convert("RGB").resize((int(w), int(h)), _bicubic())

    def cell_index(self, processor, image, grid: tuple[int, int]):
        """``(H, W)`` int array: for every pixel of the *original* image, the raster index of the visual-token cell
        it falls in (``-1`` where the processor crops it away). Default: a plain resize of the whole image."""
        import numpy as np

        W, H = image.size
        rows = np.minimum(np.arange(H) * grid[0] // H, grid[0] - 1)
        cols = np.minimum(np.arange(W) * grid[1] // W, grid[1] - 1)
        return rows[:, None] * grid[1] + cols[None, :]

    def image_grid(self, processor, image) -> tuple[int, int] | None:
        """The visual-token grid the processor gives ``image`` (fixed for LLaVA, size-dependent for Qwen)."""
        return None

    def new_tokens(self, sequences: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The generated part of ``generate``'s output ``(B, P + T)`` -> ``(B, T)``."""
        return sequences[:, inputs["input_ids"].shape[1]:]


class LlavaAdapter(Adapter):
    """LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP patches, ``(image_size/patch)^2`` tokens, raster grid."""

    family = "llava"

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


class QwenAdapter(Adapter):
    """Qwen2-VL / Qwen2.5-VL: variable grids from ``image_grid_thw`` after the ``merge x merge`` merge."""

    family = "qwen2-vl"

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


class InstructBlipAdapter(Adapter):
    """InstructBLIP: 32 Q-Former query tokens prepended to the prompt; no spatial grid in the language model."""

    family = "instructblip"
    multi_image = False

    def prompt(self, processor, question: str, n_images: int = 1) -> str:
        if getattr(processor, "chat_template", None):
            return super().prompt(processor, question, n_images)
        return question

    def visual_tokens_per_image(self, model) -> int:
        return int(model.config.num_query_tokens)

    def patch_grid(self, model) -> tuple[int, int]:
        """The vision encoder's patch grid (the Q-Former attends to CLS + these patches in raster order)."""
        vc = model.config.vision_config
        n = vc.image_size // vc.patch_size
        return (n, n)

    def qformer_cross_attention(self, model, inputs: dict) -> torch.Tensor:
        """Q-Former cross-attention of the query tokens over the image tokens, averaged over heads and over the
        cross-attention layers: ``(B, n_query, 1 + rows*cols)`` (column 0 is CLS).

        The Q-Former runs eagerly for this one call (its fused kernel returns no weights); the previous
        implementation is restored afterwards."""
        prev = model.config.qformer_config._attn_implementation
        model.set_attn_implementation({"qformer_config": "eager"})
        try:
            out = model.get_image_features(pixel_values=inputs["pixel_values"],
                                           qformer_input_ids=inputs["qformer_input_ids"],
                                           qformer_attention_mask=inputs.get("qformer_attention_mask"),
                                           output_attentions=True, return_dict=True)
        finally:
            model.set_attn_implementation({"qformer_config": prev})
        cross = [a for a in out.qformer_outputs.cross_attentions if a is not None]
        if not cross:
            raise RuntimeError("the Q-Former returned no cross-attention weights")
        nq = int(model.config.num_query_tokens)
        return torch.stack([a[:, :, :nq].float().mean(1) for a in cross]).mean(0)


_BY_MODEL_TYPE = {"llava": LlavaAdapter, "qwen2_vl": lambda: QwenAdapter("qwen2-vl"),
                  "qwen2_5_vl": lambda: QwenAdapter("qwen2.5-vl"), "instructblip": InstructBlipAdapter}


def adapter_for(model) -> Adapter:
    """The adapter for a loaded model, from ``config.model_type``."""
    mt = model.config.model_type
    if mt not in _BY_MODEL_TYPE:
        raise ValueError(f"unsupported model type '{mt}'; hallufix supports {', '.join(sorted(_BY_MODEL_TYPE))}")
    return _BY_MODEL_TYPE[mt]()


def _bicubic():
    from PIL import Image

    return Image.Resampling.BICUBIC


def grid_shape(n_tokens: int) -> tuple[int, int] | None:
    """A square grid for ``n_tokens`` if it is a perfect square."""
    r = int(math.isqrt(n_tokens))
    return (r, r) if r * r == n_tokens else None
