"""Loading a family's processor from a local ``save_pretrained`` folder, with its chat template.

The family modules (:mod:`hallufix.models.families`) hold the templates and any family-specific loading (Qwen's
torchvision-free :class:`Qwen2VLImageOnlyProcessor`, InstructBLIP's Q-Former padding fix); this module applies
them. Chat templates render ``processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)``
with ``messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q}]}]``.

Importing this module imports transformers; it is only imported where a processor is needed.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import ProcessorMixin

from hallufix.models.families import FAMILIES, MODEL_TYPE_FAMILY, family_of_processor
from hallufix.models.families.qwen_processor import Qwen2VLImageOnlyProcessor

__all__ = ["Qwen2VLImageOnlyProcessor", "load_processor"]


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

    ``family`` defaults to the one named by the folder's ``config.json``, else the one whose checkpoints save the
    folder's ``processor_class``. A family with its own loader uses it (Qwen2-VL / Qwen2.5-VL:
    :class:`Qwen2VLImageOnlyProcessor` from ``Qwen2VLImageProcessorPil`` + the saved tokenizer); otherwise
    ``AutoProcessor.from_pretrained(path, local_files_only=True)`` (``LlavaProcessor`` with
    ``LlavaImageProcessorPil``, ``InstructBlipProcessor`` with ``BlipImageProcessorPil`` + Q-Former tokenizer).

    When the processor comes back without a chat template (``InstructBlipProcessor.__init__`` drops it, and
    InstructBLIP checkpoints ship none), the saved ``chat_template.jinja`` or the family's default template is
    attached. The LM tokenizer pads on the left (for batched generation); InstructBLIP's Q-Former tokenizer keeps
    its own (right) side.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; load_processor reads a local save_pretrained folder")
    family = family or _family(folder) or family_of_processor(_processor_class(folder))
    spec = FAMILIES.get(family)
    if spec is not None and spec.load_processor is not None:
        processor = spec.load_processor(folder)
    else:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    if not isinstance(processor, ProcessorMixin):
        raise TypeError(f"{folder} holds a {type(processor).__name__}, not a multimodal processor")
    spec = spec or FAMILIES.get(family_of_processor(type(processor).__name__))
    if processor.chat_template is None:
        saved = folder / "chat_template.jinja"
        processor.chat_template = saved.read_text() if saved.is_file() else (spec.chat_template if spec else None)
    if spec is not None and spec.finish_processor is not None:
        spec.finish_processor(processor)
    processor.tokenizer.padding_side = "left"
    return processor
