"""A hook recorder: a plugin that declares chosen hook points and records ``(name, phase, step, shape)``."""
from __future__ import annotations

from hallufix import hookimpl


class HookRecorder:
    """Declare ``points`` (a list of :class:`~hallufix.points.HookPoint`) and record every call.

    ``calls`` holds ``(canonical name, phase, step, tuple(shape))``; ``values`` keeps the tensors when
    ``keep=True`` (cloned)."""

    name = "recorder"

    def __init__(self, points, keep: bool = False):
        self.points, self.keep = list(points), keep
        self.calls: list[tuple] = []
        self.values: list = []

    @hookimpl
    def hallufix_configure(self, model):
        return self.points

    def _rec(self, name, event, tensor):
        self.calls.append((name, event.forward.phase if event.forward else None,
                           event.forward.step if event.forward else None, tuple(tensor.shape)))
        if self.keep:
            self.values.append(tensor.detach().clone())

    @hookimpl
    def hallufix_attn_probs(self, event):
        self._rec(f"attn_probs.{event.layer}", event, event.probs)

    @hookimpl
    def hallufix_attn_heads(self, event):
        self._rec(f"attn_heads.{event.layer}", event, event.output)

    @hookimpl
    def hallufix_layer_input(self, event):
        self._rec(f"layer_input.{event.layer}", event, event.hidden)

    @hookimpl
    def hallufix_attn_kv(self, event):
        self._rec(f"attn_kv.{event.layer}", event, event.key)

    @hookimpl
    def hallufix_logits(self, event):
        self._rec("logits", event, event.scores)


class ScoresSpy:
    """Placed last in a stack: records the next-token scores ``(B, V)`` every earlier method left, one clone per
    step, in ``steps`` (``torch.stack(spy.steps, 1)`` -> ``(B, T, V)``)."""

    name = "scores-spy"

    def __init__(self):
        self.steps: list = []

    @hookimpl
    def hallufix_configure(self, model):
        from hallufix import points

        return points.logits()

    @hookimpl
    def hallufix_logits(self, event):
        self.steps.append(event.scores.detach().clone())
