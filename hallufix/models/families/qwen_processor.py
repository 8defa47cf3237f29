"""The Qwen processor without torchvision. transformers 5.x's ``Qwen2VLProcessor`` requires a video processor,
which requires torchvision (which breaks transformers on CPU torch). :class:`Qwen2VLImageOnlyProcessor` is the same
processor without the video part. ``save_pretrained`` writes the standard layout (``processor_config.json`` with
``"processor_class": "Qwen2VLImageOnlyProcessor"``, tokenizer files, ``chat_template.jinja``).
``AutoProcessor.from_pretrained`` cannot rebuild it: it does not know the class name and *silently* returns the bare
tokenizer. Reload with ``Qwen2VLImageOnlyProcessor.from_pretrained(folder)`` (``ProcessorMixin`` reads the
``__init__`` signature, so it loads ``Qwen2VLImageProcessorPil`` + the tokenizer) or, for any family,
:func:`hallufix.models.processors.load_processor`, which also handles real Qwen2-VL / Qwen2.5-VL checkpoints.

Importing this module imports transformers.
"""
from __future__ import annotations

from transformers import ProcessorMixin
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` for images only: no ``video_processor`` (so no torchvision); serves Qwen2-VL and
    Qwen2.5-VL (their processors differ only in the video part).

    ``processor(images=img | [imgs], text=str | [strs], return_tensors="pt", padding=True)`` returns
    ``input_ids`` / ``attention_mask`` / ``mm_token_type_ids`` ``(B, L)`` (each ``<|image_pad|>`` expanded to
    ``grid_t*grid_h*grid_w // merge_size**2`` tokens; ``mm_token_type_ids`` is 1 there), ``pixel_values``
    ``(sum_i grid_t*grid_h*grid_w, 3*temporal_patch*patch*patch)`` (flattened patches of all images) and
    ``image_grid_thw`` ``(num_images, 3)``.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # Real Qwen tokenizers do not always name their image/video tokens; fall back to the literal strings.
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
