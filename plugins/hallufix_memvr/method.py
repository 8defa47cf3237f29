"""MemVR -- "Look twice before you answer" (Zou et al., ICML 2025): when the model is uncertain at an early layer,
re-inject the visual tokens as key-value memory of the next layer's FFN.

Per forward (prefill and every decode step) and batch row (docs/methods/memvr.md has the equations and sources):

1. Trigger: for the layers ``l`` with ``start < l < end``, the logit lens of layer ``l``'s output at the last
   position (final norm + ``lm_head``), its top-10 scores, ``p = softmax(top10)``,
   ``H = -sum p log p / log 10``; the first ``l`` with ``H > gamma`` triggers (once per forward).
2. Retrace at layer ``j = l + 1``'s FFN, for every position of the forward:
   ``FFN'(x) = (1 - alpha) FFN(x) + alpha * (mean|FFN(x)| / mean|A(x)|) * A(x)``, ``A(x) = (x Z^T) Z`` with ``Z``
   ``(n, d)`` the row's visual tokens as the language model received them (the projector's output; the official
   code's ``w1 = c1 Z``, ``w2 = c2 Z^T`` scales cancel in the normalisation) and the means over the row's real
   positions in this forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import hallufix
from hallufix import points as P
from hallufix.method import Method

PAPER_START, PAPER_END, PAPER_DEPTH = 5, 16, 32  # the official scripts' --starting-layer / --ending-layer, LLaVA-1.5


@dataclass
class Config:
    retracing_ratio: float = 0.12    # alpha (official README / MME script; the CHAIR script uses 0.31); 0: no-op
    entropy_threshold: float = 0.75  # gamma on the top-k entropy normalised by log k
    starting_layer: str = "auto"     # 0-based; the trigger looks at layers l with start < l < end (auto: 5 of 32)
    ending_layer: str = "auto"       # 0-based (auto: 16 of 32, scaled to the model's depth)
    top_k: int = 10                  # scores entering the entropy (official: 10)
    lens_norm: bool = True           # final norm before lm_head in the trigger's lens (official: yes)

    def validate(self):
        if not 0 <= self.retracing_ratio <= 1:
            raise ValueError(f"retracing_ratio must be in [0, 1], got {self.retracing_ratio}")
        if self.top_k < 2:
            raise ValueError(f"top_k must be >= 2, got {self.top_k}")


def _scale(layer: int, L: int) -> int:
    return math.floor(layer * L / PAPER_DEPTH + 0.5)


def retrace_layers(cfg: Config, L: int) -> list[int]:
    """The layers ``j = l + 1`` whose FFN may retrace (``start < l < end``, ``j <= L - 1``). ``auto`` scales the
    official 5 and 16 (of 32) to the depth and, on a model too shallow to leave a layer between them, widens the
    range to one layer below the end."""
    end = _scale(PAPER_END, L) if str(cfg.ending_layer) == "auto" else int(cfg.ending_layer)
    end = min(end, L - 1)
    if str(cfg.starting_layer) == "auto":
        start = min(_scale(PAPER_START, L), end - 2)
    else:
        start = int(cfg.starting_layer)
    return [l + 1 for l in range(max(start + 1, 0), end) if l + 1 <= L - 1]


def top_k_entropy(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``(B,)`` float32: entropy of ``softmax`` over the ``k`` largest of ``logits`` ``(B, V)``, divided by log k."""
    p = logits.topk(k, dim=-1).values.softmax(-1)
    return -(p * p.log()).sum(-1) / math.log(k)


class MemVR(Method):
    name = "memvr"
    Config = Config

    def __init__(self, config: Config | None = None):
        super().__init__(config or Config())
        self.config.validate()
        self.layers: list[int] = []
        self._visual = None       # (B, n_max, d) float32, zero in padded slots
        self._has_visual = None   # (B,) bool
        self._counts = None       # (B, L) triggers per row and retrace layer

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        cfg = self.config
        if cfg.retracing_ratio == 0:
            return []
        self.layers = retrace_layers(cfg, model.num_layers)
        if not self.layers:
            raise ValueError(f"memvr: starting_layer={cfg.starting_layer!r} / ending_layer={cfg.ending_layer!r} leave "
                             f"no layer to retrace on the {model.num_layers} of {model.display_name}")
        return (P.layer_input(0, phases={"prefill"}) + P.logit_lens(self.layers) + P.mlp_out(self.layers))

    @hallufix.hookimpl
    def hallufix_batch_start(self, batch):
        self._visual = None
        self._counts = torch.zeros(batch.batch_size, batch.model.num_layers, dtype=torch.long)  # moved to the
        # model's device at the prefill (batch_start runs before the processor: no tensor of this batch exists yet)

    @hallufix.hookimpl
    def hallufix_layer_input(self, event):
        vt = event.visual
        h = event.hidden
        idx = vt.index.clamp(min=0)[..., None].expand(-1, -1, h.shape[-1])
        z = h.gather(1, idx).float() * vt.valid[..., None]
        self._visual, self._has_visual = z, vt.valid.any(-1)
        if self._counts.shape[0] != h.shape[0]:  # branch rows (another method's extra forwards) follow the main ones
            self._counts = torch.zeros(h.shape[0], self._counts.shape[1], dtype=torch.long)
        self._counts = self._counts.to(h.device)

    def _state(self, forward) -> dict:
        key = ("memvr", id(self))
        if key not in forward.memo:
            forward.memo[key] = {"triggered": None, "fire": {}}
        return forward.memo[key]

    @hallufix.hookimpl
    def hallufix_logit_lens(self, event):
        st = self._state(event.forward)
        done = st["triggered"]
        if done is None:
            done = torch.zeros(event.hidden.shape[0], dtype=torch.bool, device=event.hidden.device)
        if self._has_visual is not None and self._has_visual.shape == done.shape:
            done = done | ~self._has_visual  # a row without visual tokens never retraces: no lens for it
        if bool(done.all()):
            return  # every row retraced in this forward (or cannot): no lens product needed
        fire = torch.zeros_like(done)
        if bool(done.any()):  # the lens of the open rows only (a row's logits do not depend on the others)
            rows = (~done).nonzero().squeeze(1)
            logits = event.lens(event.hidden[rows], norm=self.config.lens_norm)
            fire[rows] = top_k_entropy(logits, self.config.top_k) > self.config.entropy_threshold
        else:
            fire = top_k_entropy(event.logits(norm=self.config.lens_norm), self.config.top_k) \
                > self.config.entropy_threshold
        st["triggered"] = done | fire
        st["fire"][event.layer] = fire
        if self._has_visual is not None:
            self._counts[:, event.layer] += fire & self._has_visual  # rows without visual tokens never retrace

    @hallufix.hookimpl
    def hallufix_mlp_out(self, event):
        fire = self._state(event.forward)["fire"].get(event.layer)
        if fire is None or self._visual is None:
            return
        fire = fire & self._has_visual
        if not bool(fire.any()):
            return
        x, f, z, valid = event.input, event.output, self._visual, event.valid_rows
        every = bool(fire.all())  # the common case: no row copies (Z alone is n x d per row)
        if not every:
            rows = fire.nonzero().squeeze(1)
            x, f, z, valid = x[rows], f[rows], z[rows], valid[rows]
        x, f, valid = x.float(), f.float(), valid[..., None].float()
        a = torch.bmm(torch.bmm(x, z.transpose(1, 2)), z)
        n = valid.sum((1, 2)) * x.shape[-1]
        m_f = (f.abs() * valid).sum((1, 2)) / n
        m_a = (a.abs() * valid).sum((1, 2)) / n
        alpha = self.config.retracing_ratio
        new = ((1 - alpha) * f + alpha * (m_f / m_a)[:, None, None] * a).to(event.output.dtype)
        if every:
            event.output = new
            return
        out = event.output.clone()
        out[rows] = new
        event.output = out

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        if self._counts is None or not self.layers:
            return
        counts = self._counts.cpu()
        if batch.beams > 1:  # beam search: a question's beams are consecutive rows; count over all of them
            counts = counts[: batch.batch_size * batch.beams].view(batch.batch_size, batch.beams, -1).sum(1)
        for row in range(batch.batch_size):  # the main rows (branch rows, if any, follow them)
            batch.diagnostics[row]["memvr"] = {"retraced_at": {str(j): int(counts[row, j]) for j in self.layers
                                                                if counts[row, j] > 0}}
