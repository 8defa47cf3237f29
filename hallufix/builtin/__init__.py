"""The built-in default: a small LLaVA-architecture model trained on a synthetic shapes world that hallucinates.

``hallufix run --plugins clva,ara`` with no ``--model`` / ``--task`` uses it with the synthetic POPE task; the model
ships inside the package in the standard ``save_pretrained`` layout and loads through the same loader as real
checkpoints (alias ``builtin``). Retrain it with ``python -m hallufix.builtin.train`` (see docs/builtin-model.md).
"""
from __future__ import annotations

from pathlib import Path

BUILTIN_MODEL_DIR = Path(__file__).resolve().parent / "shapes_llava"


def builtin_model_available() -> bool:
    """Whether the shipped weights are present (a source checkout without them, e.g. mid-retraining)."""
    return (BUILTIN_MODEL_DIR / "config.json").is_file() and any(BUILTIN_MODEL_DIR.glob("*.safetensors"))
