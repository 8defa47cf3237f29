"""Registering attention functions with transformers, through its public API only.

transformers looks an implementation name up in ``ALL_ATTENTION_FUNCTIONS`` (the attention function) and in
``ALL_MASK_ATTENTION_FUNCTIONS`` (the function that builds the mask it receives). Both are process-wide; a name is
registered once and never removed (transformers has no public unregister). The mask function matters: an
attention function registered without one receives ``attention_mask=None``, and padding is silently ignored.
"""
from __future__ import annotations

from typing import Callable

from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def ensure_registered(name: str, attention_fn: Callable, mask_fn: Callable = sdpa_mask) -> None:
    """Register ``attention_fn`` (``AttentionInterface`` signature) and ``mask_fn`` under ``name`` unless a
    function is already registered there (idempotent; the first registration wins)."""
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, attention_fn)
    if name not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(name, mask_fn)
