"""Model aliases: short names for the checkpoints researchers use, plus the built-in trained model.

``--model`` takes an alias, a hub id, or a local folder in the ``save_pretrained`` layout.
"""
from __future__ import annotations

from pathlib import Path

ALIASES: dict[str, str] = {
    "llava-1.5": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
    "qwen-vl": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2.5-vl": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2-vl": "Qwen/Qwen2-VL-7B-Instruct",
    "instructblip": "Salesforce/instructblip-vicuna-7b",
}
BUILTIN_NAMES = ("builtin", "shapes-llava")
DEFAULT_MODEL = "builtin"


def resolve(spec: str | None) -> str:
    """Alias / ``builtin`` / hub id / folder -> what ``from_pretrained`` takes."""
    spec = spec or DEFAULT_MODEL
    if spec in BUILTIN_NAMES:
        from hallufix.builtin import BUILTIN_MODEL_DIR

        return str(BUILTIN_MODEL_DIR)
    if spec in ALIASES:
        return ALIASES[spec]
    return str(Path(spec).expanduser()) if Path(spec).expanduser().exists() else spec
