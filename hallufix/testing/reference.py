"""Running a model under an independent eager attention function: the harness every method's reference test uses.

A reference is any callable with transformers' ``AttentionInterface`` signature (``module, query, key, value,
attention_mask, scaling=..., **kw`` -> ``(output (B, q, H, D), weights)``); it receives an additive float mask
(``eager_mask``) and the un-repeated GQA keys/values.

One attention name, :data:`REFERENCE_NAME`, is registered once per process; it forwards to the reference of the
call in progress (a context variable), so a test session never grows transformers' global registry.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
from transformers.masking_utils import eager_mask

from hallufix.intercept.attn_impl import AttentionImplementation
from hallufix.intercept.installer import Installed
from hallufix.intercept.module_hooks import ModuleHooks
from hallufix.intercept.registration import ensure_registered

#: The attention implementation name the reference harness runs under.
REFERENCE_NAME = "hallufix-reference"

_CURRENT: contextvars.ContextVar = contextvars.ContextVar("hallufix_reference_attention", default=None)


def _reference_attention(module, query, key, value, attention_mask, **kwargs):
    fn = _CURRENT.get()
    if fn is None:
        raise RuntimeError(f"attention implementation {REFERENCE_NAME!r} used outside generate_with_attention")
    return fn(module, query, key, value, attention_mask, **kwargs)


@contextlib.contextmanager
def attention_as(session, attention_fn, config_key: str | None = None):
    """Within the block, ``session``'s language model (or the sub-model of ``config_key``, e.g.
    ``"qformer_config"``) runs ``attention_fn`` (``AttentionInterface`` signature, additive float mask) under
    :data:`REFERENCE_NAME`; the previous implementation comes back afterwards. For references that drive the model
    themselves (their own decode loop)."""
    ensure_registered(REFERENCE_NAME, _reference_attention, eager_mask)
    token = _CURRENT.set(attention_fn)
    key = config_key or session.adapter.text_config_key
    try:
        with Installed(AttentionImplementation(session.model, {key: REFERENCE_NAME})):
            yield
    finally:
        _CURRENT.reset(token)


def generate_with_attention(session, images, questions, attention_fn, max_new_tokens: int = 3, pre_hooks=()):
    """Greedy ``generate`` with ``attention_fn`` on the language model (restored afterwards); returns
    ``(logits (B, T, V), inputs, layout)``. ``pre_hooks``: ``(module, fn)`` forward pre-hooks (with kwargs) to
    install for the call."""
    s = session
    rows = [[im] for im in images]
    inputs = s.adapter.inputs(s.processor, rows, questions, s.device)
    layout = s.adapter.layout(s.model, inputs, rows)
    ensure_registered(REFERENCE_NAME, _reference_attention, eager_mask)
    hooks = ModuleHooks()
    for m, fn in pre_hooks:
        hooks.pre(m, fn, with_kwargs=True)
    token = _CURRENT.set(attention_fn)
    try:
        with Installed(hooks, AttentionImplementation(s.model, {s.adapter.text_config_key: REFERENCE_NAME})), \
                torch.inference_mode():
            out = s.model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                   do_sample=False, return_dict_in_generate=True, output_logits=True)
    finally:
        _CURRENT.reset(token)
    return torch.stack(out.logits, 1), inputs, layout


def layout_of(session, images, questions):
    """The token layout the processor gives these inputs (for building a reference before generating)."""
    rows = [[im] for im in images]
    inputs = session.adapter.inputs(session.processor, rows, questions, session.device)
    return session.adapter.layout(session.model, inputs, rows)
