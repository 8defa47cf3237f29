"""Leak checks: everything hallufix installs on a model must be gone after a run, also after an exception."""
from __future__ import annotations

import hashlib

import torch


def _foreign(hooks) -> int:
    """Hooks not installed by transformers itself (it adds output-capturing hooks lazily on first use)."""
    return sum(1 for fn in hooks.values() if not str(getattr(fn, "__module__", "")).startswith("transformers."))


def hook_snapshot(model) -> dict:
    """Counts of forward / pre / backward hooks on every module (transformers' own lazily installed
    output-capturing hooks excluded), the attention implementations, and a hash of every parameter (catches
    weight folds that were not restored)."""
    counts = {}
    for name, mod in model.named_modules():
        c = (_foreign(mod._forward_hooks), _foreign(mod._forward_pre_hooks), _foreign(mod._backward_hooks))
        if any(c):
            counts[name] = c
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    impl = {k: getattr(getattr(model.config, k, None), "_attn_implementation", None)
            for k in ("text_config", "vision_config", "qformer_config")}
    return {"hooks": counts, "params": h.hexdigest(), "attn": impl}


def assert_no_hook_leaks(model, before: dict) -> None:
    """Assert the model is exactly as :func:`hook_snapshot` saw it before."""
    from hallufix.intercept.attention import ACTIVE

    after = hook_snapshot(model)
    assert after["hooks"] == before["hooks"], f"module hooks leaked: {before['hooks']} -> {after['hooks']}"
    assert after["attn"] == before["attn"], f"attention implementation not restored: {after['attn']}"
    assert after["params"] == before["params"], "model weights changed (a fold was not restored)"
    assert ACTIVE.get() is None, "an interceptor is still active"
