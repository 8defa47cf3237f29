"""The inputs of a batched beam look-ahead forward (:meth:`~hallufix.decoding.candidates.CandidateEvent.lookahead_many`).

``k`` candidate tokens per beam become ``k`` query rows of one decode forward. They must behave as ``k`` separate
one-token decode steps on the same cache, so each row gets

* the **position** the next decode step would get: the last entry of the step's own prepared ``position_ids``
  (``(N, 1)`` for Llama-style models, ``(3|4, N, 1)`` multimodal rope rows with the text row first for
  Qwen2-VL / Qwen2.5-VL, already carrying ``rope_deltas``), repeated ``k`` times; ``token_type_ids`` /
  ``mm_token_type_ids`` likewise;
* a **4D additive mask** ``(N, 1, k, L + k)`` in the model dtype: the beam's 2D padding mask over the ``L``
  cached keys (0 where visible, the dtype's minimum where padded), then the identity over the ``k`` new keys
  (each candidate sees its own key only). transformers' ``masking_utils`` passes a prepared 4D mask through
  unchanged (``_preprocess_mask_arguments``), so the model's own attention receives it.

The new keys are written to cache slots ``L .. L + k - 1``; the caller crops the cache back to ``L``.
Attention kernels that take no arbitrary mask (flash, flex) cannot run this: :func:`takes_4d_mask` says so and
the caller falls back to one look-ahead forward per candidate.
"""
from __future__ import annotations

import torch

from hallufix.intercept.module_hooks import ModuleHooks

#: ``position_ids``-like inputs a decode step carries with one entry per new token (last dim)
PER_TOKEN = ("position_ids", "token_type_ids", "mm_token_type_ids")


def takes_4d_mask(model) -> bool:
    """Whether the language model's attention implementation accepts a prepared 4D float mask."""
    configs = [model.config] + [getattr(model.config, k) for k in ("text_config",) if hasattr(model.config, k)]
    impls = {str(getattr(c, "_attn_implementation", "") or "") for c in configs}
    return not any("flash" in i or "flex" in i for i in impls)


def lookahead_inputs(model, step: dict, tokens: torch.Tensor, cache_len: int, logits: bool = True) -> dict:
    """Turn ``step`` (``prepare_inputs_for_generation`` of the beams plus one token, ``next_sequence_length=1``)
    into the inputs of the look-ahead forward of ``tokens`` ``(N, k)`` on a cache of ``cache_len`` keys
    (``logits``: keep every candidate's logits, else the step's own ``logits_to_keep``)."""
    if step.get("input_ids") is None or step.get("inputs_embeds") is not None:
        raise ValueError("a batched look-ahead needs a decode step fed by input_ids")
    N, k = tokens.shape
    inputs = dict(step, input_ids=tokens)
    if logits and "logits_to_keep" in step:  # a decode step keeps the last position's logits only
        inputs["logits_to_keep"] = k
    if step.get("position_ids") is None:
        raise ValueError("a batched look-ahead needs the decode step's position_ids (generate's model_kwargs)")
    for name in PER_TOKEN:
        val = step.get(name)
        if val is not None:
            inputs[name] = val[..., -1:].expand(*val.shape[:-1], k).contiguous()
    mask2d = step.get("attention_mask")
    if mask2d is not None and mask2d.dim() != 2:
        raise ValueError("a batched look-ahead needs the 2D padding mask (a compiled/static cache prepares 4D)")
    dtype = model.get_input_embeddings().weight.dtype
    dev = tokens.device
    seen = torch.ones(N, cache_len, dtype=torch.bool, device=dev) if mask2d is None else \
        mask2d[:, :cache_len].to(device=dev, dtype=torch.bool)
    allowed = torch.cat([seen[:, None, :].expand(N, k, cache_len),
                         torch.eye(k, dtype=torch.bool, device=dev)[None].expand(N, k, k)], dim=-1)
    zero = torch.zeros((), dtype=dtype, device=dev)
    inputs["attention_mask"] = torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]  # (N, 1, k, L + k)
    return inputs


class OutputCapture:
    """``with OutputCapture(module) as c: ...``: ``c.output`` is ``module``'s output from its last call inside the
    block (a forward hook, removed on exit). A kept look-ahead (:mod:`hallufix.decoding.reuse`) records the final
    norm's rows with it, the input of ``lm_head`` for every candidate."""

    def __init__(self, module):
        self.output = None
        self._hooks = ModuleHooks().post(module, self._record)

    def _record(self, module, args, output):
        self.output = output

    def __enter__(self) -> "OutputCapture":
        self._hooks.install()
        return self

    def __exit__(self, *exc) -> bool:
        self._hooks.remove()
        return False
