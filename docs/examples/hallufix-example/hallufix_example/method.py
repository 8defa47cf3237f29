"""VisualBoost: in chosen layers, multiply every text row's attention to visual tokens by ``w`` and
renormalise. Exactly a logit bias ``log w`` on visual key columns, so the layers stay on fused SDPA.

Diagnostics (returned from ``hallufix_batch_end``; the core files them under ``"visual-boost"``): per row, the
layers boosted and how many visual tokens the row has."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import hallufix
from hallufix.method import Method
from hallufix import points


@dataclass
class Config:
    w: float = 2.0          # 1.0 is the no-op
    layers: str = "all"     # "all", "2-5", "4:", "0,3"

    def validate(self):
        if self.w <= 0:
            raise ValueError(f"w must be > 0, got {self.w}")


class VisualBoost(Method):
    name = "visual-boost"
    Config = Config

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        self.layers = []
        if self.config.w == 1.0:
            return []  # the no-op: declare nothing, so nothing is installed (batch_start / batch_end still run)
        from hallufix.config import parse_layers

        self.layers = parse_layers(self.config.layers, model.num_layers)
        return points.attn_bias(self.layers)  # points attn_bias.{i}, delivered to hallufix_attn_bias

    @hallufix.hookimpl
    def hallufix_batch_start(self, batch):
        self.calls = 0  # per-batch state: reset first in every batch

    @hallufix.hookimpl
    def hallufix_attn_bias(self, event):
        bias = torch.where(event.visual_keys, math.log(self.config.w), 0.0)  # (B, kv)
        event.add(bias)  # default rows: the text rows (instruction + generated)
        self.calls += 1

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        if not self.layers:
            return None  # the no-op says nothing
        counts = batch.visual.n  # per row: its own number of visual tokens
        return [{"layers": self.layers, "visual_tokens": int(counts[r]), "bias_calls": self.calls}
                for r in range(batch.batch_size)]
