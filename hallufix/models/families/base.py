"""The family-independent adapter: where the decoder is, how prompts and images become inputs, where the visual
tokens sit on the image. Each family module (:mod:`hallufix.models.families`) subclasses it where it differs.
Imports nothing heavy at import time (torch and :mod:`hallufix.layout` are imported where used)."""
from __future__ import annotations

import math

from hallufix.models.families.spec import Capabilities


class Adapter:
    """Family-independent behaviour; subclasses override what differs."""

    family = "generic"
    text_config_key = "text_config"
    capabilities = Capabilities()

    @property
    def multi_image(self) -> bool:
        return self.capabilities.multi_image

    # ---------------------------------------------------------------- structure
    def text_model(self, model):
        """The language model's decoder stack (``LlamaModel``, ``Qwen2VLTextModel``, ...)."""
        return model.get_decoder()

    def decoder_layers(self, model) -> list:
        return list(self.text_model(model).layers)

    def o_proj(self, layer):
        return layer.self_attn.o_proj

    def mlp(self, layer):
        """The decoder layer's MLP module (input: after ``post_attention_layernorm``; output: before the residual
        add), the module ``mlp_in.{i}`` / ``.out`` hook."""
        return layer.mlp

    def final_norm(self, model):
        """The language model's final norm (applied to the last layer's output before ``lm_head``)."""
        return self.text_model(model).norm

    def lm_head(self, model):
        """The output projection to the vocabulary."""
        return model.get_output_embeddings()

    def text_config(self, model):
        return getattr(model.config, self.text_config_key)

    def get_text_attn_implementation(self, model) -> str:
        """The language model's attention implementation (switch it with
        :class:`hallufix.intercept.attn_impl.AttentionImplementation` on ``{text_config_key: name}``)."""
        return self.text_config(model)._attn_implementation

    def image_token_id(self, model) -> int:
        cfg = model.config
        for attr in ("image_token_id", "image_token_index"):
            value = getattr(cfg, attr, None)
            if value is not None:
                return int(value)
        raise ValueError(f"{type(model).__name__}: config has no image token id")

    def model_info(self, model, name: str = ""):
        """The :class:`~hallufix.layout.ModelInfo` of ``model`` (decoder shape, image token, capabilities)."""
        from hallufix.layout import ModelInfo

        tc = self.text_config(model)
        heads = tc.num_attention_heads
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
        return ModelInfo(family=self.family, num_layers=tc.num_hidden_layers, num_heads=heads,
                         num_kv_heads=getattr(tc, "num_key_value_heads", None) or heads, head_dim=head_dim,
                         hidden_size=tc.hidden_size, image_token_id=self.image_token_id(model),
                         visual_tokens_per_image=self.visual_tokens_per_image(model), grid=self.fixed_grid(model),
                         name=name, capabilities=self.capabilities)

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
        import torch

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

    def layout(self, model, inputs: dict, images: list[list]):
        """The batch's :class:`~hallufix.layout.TokenLayout`."""
        from hallufix.layout import TokenLayout

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

    def token_to_patch(self, model, inputs: dict):
        """``((B, n_visual, rows*cols) float32, (rows, cols))``: each visual token's weights over the vision
        encoder's patch grid, for families whose capabilities declare ``token_to_patch``."""
        raise ValueError(f"{self.family} has no token-to-patch map (its capabilities do not declare token_to_patch)")

    def qformer_cross_attention_modules(self, model) -> dict:
        """``{Q-Former layer: cross-attention module}`` for families whose capabilities declare ``qformer``."""
        raise ValueError(f"{self.family} has no Q-Former (its capabilities do not declare qformer)")

    def new_tokens(self, sequences, inputs: dict):
        """The generated part of ``generate``'s output ``(B, P + T)`` -> ``(B, T)``."""
        return sequences[:, inputs["input_ids"].shape[1]:]


def _bicubic():
    from PIL import Image

    return Image.Resampling.BICUBIC


def grid_shape(n_tokens: int) -> tuple[int, int] | None:
    """A square grid for ``n_tokens`` if it is a perfect square."""
    r = int(math.isqrt(n_tokens))
    return (r, r) if r * r == n_tokens else None
