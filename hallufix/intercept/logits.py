"""The ``lm.logits`` point as a transformers ``LogitsProcessor``: the public way to see and edit next-token scores
inside ``generate`` (passed in its ``logits_processor`` list; nothing is installed on the model)."""
from __future__ import annotations

import torch
from transformers import LogitsProcessor

from hallufix.events import LogitsEvent


class LogitsHook(LogitsProcessor):
    """Calls the run's ``hallufix_logits`` caller once per generation step with a :class:`LogitsEvent` and returns
    the (possibly edited) scores ``(B, V)``. ``interceptor`` supplies the current forward, the layout and the
    fired-point count."""

    def __init__(self, interceptor, caller, name: str = "logits"):
        self.ic, self.caller, self.name = interceptor, caller, name

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ev = LogitsEvent(scores, input_ids, self.ic.forward, self.ic.layout)
        self.caller(event=ev)
        self.ic.fired(self.name)
        return ev.scores
