"""hallufix: training-free hallucination fixes for multimodal LLMs, as stackable pluggy plugins.

Importing ``hallufix`` is light (no torch): the heavy API is loaded on first attribute access.
"""
from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Decorator for hook implementations in method plugins: ``@hallufix.hookimpl``.
hookimpl = pluggy.HookimplMarker("hallufix")

_LAZY = {
    "load_model": "hallufix.api",
    "Session": "hallufix.api",
    "generate": "hallufix.api",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hallufix' has no attribute {name!r}")
