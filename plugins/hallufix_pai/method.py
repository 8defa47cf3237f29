"""Paying More Attention to Image (Liu et al., "Paying More Attention to Image: A Training-Free Method for
Alleviating Hallucination in LVLMs", ECCV 2024; official code github.com/LALBJ/PAI: ``attention.py``, ``CFG.py``).

1. Image-attention boost (paper Sec. 3.2, Eq. 4; ``llama_new_forward``): in layers ``[start, end)`` the raw
   pre-softmax scores of the query row(s) on the image columns become ``s + alpha |s|`` (after the causal mask is
   added and clamped at the dtype's minimum), for the last query row of every forward (the last prompt row at
   prefill, the new token at each decode step), then the usual softmax. A score transform
   (``attn_transform.{i}``), not a bias: ``alpha |s|`` depends on the sign of each score.
2. Image-free classifier-free guidance (Sec. 3.3, Eq. 5-6; ``CFGLogits``): a branch with the same question and no
   image (``image="none"``, no attention boost, as the official ``use_cfg`` switch turns it off there; by default
   run separately on its own short prompt as the plain model (no method's hooks), ``branch=rows`` runs it as left-padded batch
   rows that PAI's boost leaves out by row), and with
   ``s = log_softmax(logits)``, ``u = log_softmax(logits_no_image)``:

       scores = gamma (s - u) + u,   -inf where s < log(0.1) + max s      (the official cut-off, beta = 0.1)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import hallufix
from hallufix import points
from hallufix.branches import Branch
from hallufix.method import Method

BRANCH = "pai_no_image"
PAPER_START, PAPER_END, PAPER_DEPTH = 2, 32, 32  # range(2, 32) of LLaVA-1.5-7B's 32 layers (README commands)


@dataclass
class Config:
    alpha: float = 0.2          # attention boost (README's POPE / CHAIR commands: --alpha 0.2)
    gamma: float = 1.1          # CFG scale (README commands and init_cfg_processor's default: 1.1)
    beta: float = 0.1           # plausibility cut-off of the CFG scores (CFG.py: log(0.1))
    start_layer: str = "auto"   # 0-based first boosted layer; auto: the paper's 2 of 32 scaled to the depth
    end_layer: str = "auto"     # 0-based end (exclusive); auto: the model's depth (paper 32 of 32)
    rows: str = "last"          # boosted query rows: last (the official code) | text (every text row at prefill)
    branch: str = "separate"    # the image-free branch: separate (own short prompt and cache) | rows (padded rows)

    def validate(self):
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.gamma < 1:
            raise ValueError(f"gamma must be >= 1 (1 = no guidance), got {self.gamma}")
        if not 0 < self.beta <= 1:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if self.rows not in ("last", "text"):
            raise ValueError(f"rows must be last or text, got {self.rows!r}")
        if self.branch not in ("separate", "rows"):
            raise ValueError(f"branch must be separate or rows, got {self.branch!r}")


def resolve_layers(cfg: Config, L: int) -> list[int]:
    """0-based boosted layers: ``[start, end)``; auto scales the paper's ``range(2, 32)`` of 32 layers by
    ``L / 32`` (start rounded half up: 2 of 28 for Qwen-7B, 0 of 4 on tiny models)."""
    start = math.floor(PAPER_START * L / PAPER_DEPTH + 0.5) if str(cfg.start_layer) == "auto" else int(cfg.start_layer)
    end = L if str(cfg.end_layer) == "auto" else int(cfg.end_layer)
    if not 0 <= start < end <= L:
        raise ValueError(f"pai needs 0 <= start_layer < end_layer <= {L}; got {start}, {end}")
    return list(range(start, end))


def boost(scores: torch.Tensor, columns: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s + alpha |s|`` where ``columns`` (broadcast to ``scores``) is True, ``s`` elsewhere."""
    return torch.where(columns, scores + alpha * scores.abs(), scores)


def guidance(scores: torch.Tensor, no_image: torch.Tensor, gamma: float, beta: float) -> torch.Tensor:
    """``(B, V)`` CFG scores from the main and image-free ``(B, V)`` logits (float32)."""
    s, u = torch.log_softmax(scores.float(), -1), torch.log_softmax(no_image.float(), -1)
    out = gamma * (s - u) + u
    cutoff = math.log(beta) + s.max(dim=-1, keepdim=True).values
    return out.masked_fill(s < cutoff, -math.inf)


class PAI(Method):
    name = "pai"
    Config = Config

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        c = self.config
        self.layers = resolve_layers(c, model.num_layers)
        pts = points.attn_transform(self.layers, rows=c.rows) if c.alpha != 0 else []
        return pts + (points.logits() if c.gamma != 1 else [])

    @hallufix.hookimpl
    def hallufix_declare_branches(self, model):
        if self.config.gamma == 1:
            return []
        if self.config.branch == "rows":  # every hook sees the rows; the boost leaves them out (_boosted)
            return [Branch(BRANCH, image="none", mode="rows")]
        return [Branch(BRANCH, image="none", hooks="none")]  # the plain model on its own short prompt (CFG.py)

    @staticmethod
    def _boosted(layout):
        """Every row but PAI's own image-free rows (unconditional: no boost there, as in the official code; they
        have no image columns either); other methods' branch rows (VCD's noised image) are boosted like the main
        rows. ``None``: all rows. (Run separately, the branch excludes PAI's hooks and never reaches here.)"""
        return ~layout.rows_of(BRANCH) if BRANCH in getattr(layout, "branch_names", ()) else None

    @hallufix.hookimpl
    def hallufix_attn_transform(self, event):
        cols = event.visual_keys[:, None, None, :]  # (B, 1, 1, kv)
        boosted = self._boosted(event.layout)
        if boosted is not None:
            cols = cols & boosted[:, None, None, None]
        if self.config.rows == "text" and event.forward.q_len > 1:
            cols = cols & event.row_mask("text")[:, None, :, None]
        event.scores = boost(event.scores, cols, self.config.alpha)

    @hallufix.hookimpl
    def hallufix_logits(self, event):
        c = self.config
        event.scores = guidance(event.scores, event.branches[BRANCH], c.gamma, c.beta).to(event.scores.dtype)

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        c = self.config
        if c.alpha == 0 and c.gamma == 1:
            return
        for diag in batch.diagnostics:
            diag[self.name] = {"layers": [self.layers[0], self.layers[-1]], "alpha": c.alpha, "gamma": c.gamma}
