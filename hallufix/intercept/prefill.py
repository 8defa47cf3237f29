"""An analysis prefill: one forward of the model that computes only what an analysis reads.

* :func:`last_logits_only`: the forward keyword that limits the LM head to the last position, where the model's
  ``forward`` accepts one (over a 600-token LLaVA prompt the full LM head costs as much as the decoder layers);
* :class:`StopAfter`: an installer whose forward hook ends the forward after a given module (the last decoder layer
  the analysis probes) by raising :class:`PrefillDone`, which :func:`run_prefill` catches.
"""
from __future__ import annotations

import inspect

import torch


class PrefillDone(Exception):
    """Raised by :class:`StopAfter` after the last module an analysis prefill needs."""


def _stop(module, args, output):
    raise PrefillDone


class StopAfter:
    """Installer: a forward hook on ``module`` that raises :class:`PrefillDone` once it has run."""

    def __init__(self, module: torch.nn.Module):
        self.module, self._handle = module, None

    def install(self) -> None:
        self._handle = self.module.register_forward_hook(_stop)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def last_logits_only(model) -> dict:
    """``{"logits_to_keep": 1}`` when ``model.forward`` takes that argument, else ``{}``."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def run_prefill(model, inputs: dict, stop_after: torch.nn.Module | None = None) -> None:
    """``model(**inputs)`` with a fresh cache, the LM head on the last position only, and the forward ended after
    ``stop_after`` (``None``: the whole forward). The caller reads what it needs through hooks it installed."""
    stop = StopAfter(stop_after) if stop_after is not None else None
    if stop is not None:
        stop.install()
    try:
        model(**inputs, use_cache=True, **last_logits_only(model))
    except PrefillDone:
        pass
    finally:
        if stop is not None:
            stop.remove()
