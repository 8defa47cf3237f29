"""Events of the MLP hook points: ``mlp_in.{i}`` (:class:`MLPEvent`) and ``mlp_out.{i}``
(:class:`MLPOutEvent`).

The MLP input is the decoder layer's hidden states after ``post_attention_layernorm``; the output is the FFN's
result before the residual add. Both are ``(B, q, d)`` in the model dtype on the model's device; an edit keeps the
shape and is moved to that device and dtype (as every event's hand-back).
"""
from __future__ import annotations

from functools import cached_property

import torch

from hallufix.events import HiddenEvent, LayerEvent, _conform


class _MLPBase(LayerEvent):
    @cached_property
    def valid_rows(self) -> torch.Tensor:
        """``(B, q)`` bool: query rows that are not left padding (every generated row is valid)."""
        lay, pos = self.layout, self.positions
        P = lay.prompt_len
        gathered = lay.valid[:, pos.clamp(max=P - 1)]
        return torch.where((pos < P)[None, :], gathered, torch.ones_like(gathered))

    def lens(self, layer: int, norm: bool = True) -> torch.Tensor:
        """``(B, V)`` float32 logit lens of ``layer`` (declared, and ``<=`` this layer) in this forward."""
        from hallufix.events_lens import lens_logits

        return lens_logits(self, layer, norm=norm)


class MLPEvent(_MLPBase, HiddenEvent):
    """``mlp_in.{i}``: ``hidden`` ``(B, q, d)``, the MLP's input; assign to edit (as a layer-input event's)."""


class MLPOutEvent(_MLPBase):
    """``mlp_out.{i}``: ``output`` ``(B, q, d)`` before the residual add (assign to edit) and ``input``
    ``(B, q, d)``, what the MLP received (read-only)."""

    def __init__(self, output: torch.Tensor, input: torch.Tensor, **kw):
        super().__init__(**kw)
        self._output, self.input = output, input

    @property
    def output(self) -> torch.Tensor:
        return self._output

    @output.setter
    def output(self, new: torch.Tensor) -> None:
        old = self._output
        self._output = _conform(f"layer {self.layer}: MLP output", new, old.shape, old.device, old.dtype)
