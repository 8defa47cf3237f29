"""What a model family is: its declared :class:`Capabilities` and the :class:`Family` record each family module
exports as ``FAMILY``. Pure data, imports nothing heavy (no torch, no transformers)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Capabilities:
    """What a family's visual tokens support; plugins test these, never family names.

    Attributes:
        spatial_grid: the language model's visual tokens sit on a ``(rows, cols)`` raster of the image (LLaVA's
            patches, Qwen's merged cells), so a per-token map is a map over the image.
        multi_image: a prompt may hold several images (methods that add a second image per row need it).
        token_to_patch: the analysis prefill can map the visual tokens onto the vision encoder's patch grid
            (:attr:`hallufix.capture.PrefillCapture.token_to_patch`; InstructBLIP's Q-Former cross-attention).
        qformer: the visual tokens come out of a Q-Former whose cross-attention over the vision encoder's
            features (CLS first, then the patches in raster order) the core can bias: hook points
            ``qformer_bias.{i}`` at the layers in ``ModelInfo.qformer_layers``.
    """

    spatial_grid: bool = True
    multi_image: bool = True
    token_to_patch: bool = False
    qformer: bool = False


@dataclass(frozen=True)
class Family:
    """One supported model family.

    Attributes:
        name: the family name (``ModelInfo.family``, preset file stem).
        display_name: how messages name it (``"LLaVA-1.5"``).
        model_types: ``config.model_type`` values that belong to it, each with its ``transformers`` class name.
        adapter: zero-argument factory of the family's :class:`~hallufix.models.families.base.Adapter`.
        capabilities: what its visual tokens support.
        chat_template: the Jinja chat template used when a checkpoint ships none.
        aliases: short ``--model`` names -> hub ids.
        processor_classes: ``processor_class`` names saved with its checkpoints.
        load_processor: ``(folder) -> processor`` for a local folder (default: ``AutoProcessor``).
        finish_processor: ``(processor) -> None`` applied after loading (default: nothing).
        tiny: ``(image_size, *, shape, num_query_tokens, **lm_dims) -> (model, processor)`` building the tiny
            random model (see :mod:`hallufix.models.tiny`; each builder uses what applies to it).
        tiny_real: the tiny builder's dims for the ``real`` shape: the checkpoint's decoder depth, query heads,
            KV heads (and query tokens) at head_dim 8.
        tokenizer_kwargs: init kwargs of its tiny LM tokenizer: named special tokens (``image_token`` ...) and,
            where the processor allows it, ``padding_side`` (saved with the tokenizer).
        preset_names: preset file stems tried in order for this family (its own name, then a file shared with
            a sibling family, e.g. ``qwen``).
    """

    name: str
    display_name: str
    model_types: dict[str, str]
    adapter: Callable
    capabilities: Capabilities
    chat_template: str
    tiny: Callable
    aliases: dict[str, str] = field(default_factory=dict)
    processor_classes: tuple[str, ...] = ()
    load_processor: Callable | None = None
    finish_processor: Callable | None = None
    tiny_real: dict = field(default_factory=dict)
    tokenizer_kwargs: dict[str, str] = field(default_factory=dict)
    preset_names: tuple[str, ...] = ()

    def presets(self) -> tuple[str, ...]:
        return (self.name, *self.preset_names)
