"""Running a model under an independent eager attention function: the harness every method's reference test uses.

A reference is any callable with transformers' ``AttentionInterface`` signature (``module, query, key, value,
attention_mask, scaling=..., **kw`` -> ``(output (B, q, H, D), weights)``); it receives an additive float mask
(``eager_mask``) and the un-repeated GQA keys/values.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask


def generate_with_attention(session, images, questions, attention_fn, max_new_tokens: int = 3, pre_hooks=()):
    """Greedy ``generate`` with ``attention_fn`` on the language model (restored afterwards); returns
    ``(logits (B, T, V), inputs, layout)``. ``pre_hooks``: ``(module, fn)`` forward pre-hooks (with kwargs) to
    install for the call."""
    s = session
    rows = [[im] for im in images]
    inputs = s.adapter.inputs(s.processor, rows, questions, s.device)
    layout = s.adapter.layout(s.model, inputs, rows)
    name = f"hallufix-reference-{id(attention_fn)}"
    AttentionInterface.register(name, attention_fn)
    AttentionMaskInterface.register(name, eager_mask)
    prev = s.adapter.get_text_attn_implementation(s.model)
    handles = [m.register_forward_pre_hook(fn, with_kwargs=True) for m, fn in pre_hooks]
    s.adapter.set_text_attn_implementation(s.model, name)
    try:
        with torch.inference_mode():
            out = s.model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                   do_sample=False, return_dict_in_generate=True, output_logits=True)
    finally:
        s.adapter.set_text_attn_implementation(s.model, prev)
        for h in handles:
            h.remove()
    return torch.stack(out.logits, 1), inputs, layout


def layout_of(session, images, questions):
    """The token layout the processor gives these inputs (for building a reference before generating)."""
    rows = [[im] for im in images]
    inputs = session.adapter.inputs(session.processor, rows, questions, session.device)
    return session.adapter.layout(session.model, inputs, rows)
