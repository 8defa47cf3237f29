"""Processors that work without torchvision, and chat templates for locally built models.

transformers 5.x's Qwen2-VL processor requires a video processor, which requires torchvision (which breaks
transformers on CPU torch). :class:`Qwen2VLImageOnlyProcessor` is the same processor without the video part; it
saves with ``save_pretrained`` and reloads with :func:`load_qwen_processor`.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import ProcessorMixin
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

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


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` for images only: no ``video_processor`` (so no torchvision). Same outputs for images:
    ``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``pixel_values`` (flattened patches),
    ``image_grid_thw``."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def load_qwen_processor(path: str | Path, **kw) -> Qwen2VLImageOnlyProcessor:
    """Rebuild the image-only Qwen processor from a local folder or hub id (tokenizer + PIL image processor + the
    chat template saved beside them)."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, **kw)
    template = _chat_template(path, **kw) or getattr(tokenizer, "chat_template", None) or QWEN_TEMPLATE
    return Qwen2VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def _chat_template(path: str | Path, **kw) -> str | None:
    folder = Path(path)
    if folder.is_dir():
        if (folder / "chat_template.jinja").is_file():
            return (folder / "chat_template.jinja").read_text()
        if (folder / "chat_template.json").is_file():
            return json.loads((folder / "chat_template.json").read_text()).get("chat_template")
        return None
    from huggingface_hub import hf_hub_download

    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            f = hf_hub_download(str(path), name, **{k: v for k, v in kw.items() if k in ("revision", "cache_dir")})
        except Exception:
            continue
        text = Path(f).read_text()
        return json.loads(text).get("chat_template") if name.endswith(".json") else text
    return None
