"""Loading real checkpoints (hub id or local ``save_pretrained`` folder) and their processors, offline-friendly.

A hub id that is not in the local cache, on a machine without internet, fails with
:class:`ModelNotAvailableError` naming the id and how to point hallufix at a local copy.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotAvailableError(RuntimeError):
    """The model's files are neither a local folder nor in the local Hugging Face cache."""


def _model_type(path: str) -> str:
    folder = Path(path)
    if folder.is_dir():
        cfg = folder / "config.json"
        if not cfg.is_file():
            raise ModelNotAvailableError(f"{folder} has no config.json: not a save_pretrained model folder")
        return json.loads(cfg.read_text())["model_type"]
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(path, "config.json")).read_text())["model_type"]
    except Exception as exc:
        raise ModelNotAvailableError(
            f"model '{path}' is not available here ({type(exc).__name__}). On a machine with internet run "
            f"`huggingface-cli download {path} --local-dir /path/to/folder`, copy the folder here and pass "
            f"--model /path/to/folder (or set HF_HOME to a cache that holds it).") from None


def family_of(model) -> str:
    """``llava``, ``qwen2-vl``, ``qwen2.5-vl`` or ``instructblip`` from ``config.model_type``."""
    return {"llava": "llava", "qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl",
            "instructblip": "instructblip"}[model.config.model_type]


def load_pretrained(path_or_id: str, *, dtype: str = "auto", device: str = "cpu", attn_implementation: str = "sdpa"):
    """``(model, processor)`` from a hub id or folder; the model in eval mode on ``device``.

    ``dtype="auto"`` keeps the checkpoint's dtype (float32 on CPU when the checkpoint is half precision, since CPU
    half matmuls are slow and lossy)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_type = _model_type(path_or_id)
    kwargs = {"attn_implementation": attn_implementation}
    if dtype != "auto":
        kwargs["dtype"] = DTYPES[dtype]
    elif device == "cpu":
        kwargs["dtype"] = torch.float32
    try:
        model = AutoModelForImageTextToText.from_pretrained(path_or_id, **kwargs)
        if model_type in QWEN_TYPES:
            from hallufix.models.processors import load_qwen_processor

            processor = load_qwen_processor(path_or_id)
        else:
            processor = AutoProcessor.from_pretrained(path_or_id)
    except OSError as exc:
        raise ModelNotAvailableError(f"could not load '{path_or_id}': {exc}. Pass --model /path/to/folder with a "
                                     f"save_pretrained copy of the checkpoint.") from None
    processor.tokenizer.padding_side = "left"
    return model.to(device).eval(), processor
