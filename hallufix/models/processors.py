"""Processors that work without torchvision, per-family chat templates, and processor loading from a folder.

* :class:`Qwen2VLImageOnlyProcessor` -- transformers 5.x's ``Qwen2VLProcessor`` requires a video processor, which
  requires torchvision (which breaks transformers on CPU torch, transformers.md G1/G2). This subclass is the same
  processor without the video part. ``save_pretrained`` writes the standard layout (``processor_config.json`` with
  ``"processor_class": "Qwen2VLImageOnlyProcessor"``, tokenizer files, ``chat_template.jinja``).
  ``AutoProcessor.from_pretrained`` cannot rebuild it: it does not know the class name and *silently* returns the
  bare tokenizer. Reload with ``Qwen2VLImageOnlyProcessor.from_pretrained(folder)`` (``ProcessorMixin`` reads the
  ``__init__`` signature, so it loads ``Qwen2VLImageProcessorPil`` + the tokenizer) or, for any family,
  :func:`load_processor`, which also handles real Qwen2-VL / Qwen2.5-VL checkpoints.
* Chat templates (Jinja strings) for ``processor.apply_chat_template(messages, add_generation_prompt=True,
  tokenize=False)`` with ``messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text",
  "text": Q}]}]``:

  - LLaVA-1.5: ``"USER: <image>\\n{Q} ASSISTANT:"``
  - Qwen: ``"<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>{Q}<|im_end|>\\n<|im_start|>assistant\\n"``
  - InstructBLIP: ``"{Q}"`` (the processor itself prepends the query-token placeholders).

Importing this module imports transformers; it is only imported where a processor is needed.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import ProcessorMixin
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

from hallufix.models.loading import MODEL_TYPE_FAMILY

LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
INSTRUCTBLIP_TEMPLATE = (
    "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endfor %}"
)
#: family -> default chat template (used when a checkpoint ships none, e.g. InstructBLIP).
TEMPLATES = {"llava": LLAVA_TEMPLATE, "qwen2-vl": QWEN_TEMPLATE, "qwen2.5-vl": QWEN_TEMPLATE,
             "instructblip": INSTRUCTBLIP_TEMPLATE}
QWEN_PROCESSOR_CLASSES = ("Qwen2VLImageOnlyProcessor", "Qwen2VLProcessor", "Qwen2_5_VLProcessor")


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


def _processor_class(folder: Path) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        f = folder / name
        if f.is_file():
            cls = json.loads(f.read_text()).get("processor_class")
            if cls:
                return cls
    return None


def _family(folder: Path) -> str | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    return MODEL_TYPE_FAMILY.get(json.loads(cfg.read_text()).get("model_type", ""))


def load_processor(path: str | Path, *, family: str | None = None):
    """The processor saved in a local ``save_pretrained`` folder (tiny or real checkpoint), never touching the hub.

    * Qwen (``family`` in ``qwen2-vl`` / ``qwen2.5-vl``, or a saved ``processor_class`` naming a Qwen processor):
      :class:`Qwen2VLImageOnlyProcessor` from ``Qwen2VLImageProcessorPil`` + the saved tokenizer.
    * Otherwise ``AutoProcessor.from_pretrained(path, local_files_only=True)`` (``LlavaProcessor`` with
      ``LlavaImageProcessorPil``, ``InstructBlipProcessor`` with ``BlipImageProcessorPil`` + Q-Former tokenizer).

    ``family`` defaults to the one named by the folder's ``config.json``. When the processor comes back without a
    chat template (``InstructBlipProcessor.__init__`` drops it, and InstructBLIP checkpoints ship none), the saved
    ``chat_template.jinja`` or the family default from :data:`TEMPLATES` is attached. The LM tokenizer pads on the
    left (for batched generation); InstructBLIP's Q-Former tokenizer keeps its own (right) side.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; load_processor reads a local save_pretrained folder")
    family = family or _family(folder)
    if family in ("qwen2-vl", "qwen2.5-vl") or _processor_class(folder) in QWEN_PROCESSOR_CLASSES:
        processor = Qwen2VLImageOnlyProcessor.from_pretrained(str(folder), local_files_only=True)
    else:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    if not isinstance(processor, ProcessorMixin):
        raise TypeError(f"{folder} holds a {type(processor).__name__}, not a multimodal processor")
    family = family or {"LlavaProcessor": "llava", "InstructBlipProcessor": "instructblip"}.get(
        type(processor).__name__, "qwen2-vl")
    if processor.chat_template is None:
        saved = folder / "chat_template.jinja"
        processor.chat_template = saved.read_text() if saved.is_file() else TEMPLATES.get(family)
    if family == "instructblip":
        # InstructBlipProcessor passes the LM tokenizer's *init kwargs* to both tokenizers, so a saved
        # padding_side="left" would left-pad the Q-Former text too and shift its absolute positions (batched
        # results then differ from single ones). Keep the LM's side as an attribute only.
        processor.tokenizer.init_kwargs.pop("padding_side", None)
    processor.tokenizer.padding_side = "left"
    return processor
