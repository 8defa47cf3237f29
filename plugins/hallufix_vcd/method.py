"""Visual Contrastive Decoding (Leng et al., "Mitigating Object Hallucinations in Large Vision-Language Models
through Visual Contrastive Decoding", CVPR 2024).

One branch (``noised``) sees each image distorted by forward diffusion (:mod:`hallufix_vcd.noise`, step
``noise_step`` of 1000); at every step the next-token scores become (Eq. 5-7 of the paper, the official
``vcd_sample.py``):

    cd      = (1 + alpha) * logit(y | v, x) - alpha * logit(y | v', x)
    cut-off : tokens with logit(y | v, x) < log(beta) + max_w logit(w | v, x) get -inf

(the cut-off in logit space is the adaptive plausibility constraint ``p(y) >= beta * max_w p(w)``). The branch runs
as extra batch rows of the same forward by default (``branch=rows``; the noised prompt has the main rows' length, so
rows need no padding and share every step's pass over the weights) or separately (``branch=separate``), in
lockstep on the main rows' token (:mod:`hallufix.intercept.branch`).
The contrast is applied to the scores the logits hook receives (raw logits when VCD is first or alone), so any
decoding strategy that draws from ``lm.logits`` (greedy here; the paper's sampling through a sampler) uses it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import hallufix
from hallufix import points
from hallufix.branches import Branch
from hallufix.method import Method
from hallufix_vcd.noise import NUM_STEPS, diffuse, image_seed

BRANCH = "vcd_noised"


@dataclass
class Config:
    alpha: float = 1.0        # contrast strength (paper and official eval scripts: cd_alpha 1)
    beta: float = 0.1         # adaptive plausibility cut-off (cd_beta 0.1)
    noise_step: int = 500     # diffusion step t of 1000 (noise_step 500)
    seed: int = 0             # mixed with each image's pixels to seed its noise
    branch: str = "auto"      # the noised branch: auto (= rows) | rows (extra batch rows) | separate (own forwards)

    def validate(self):
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if not 0 < self.beta <= 1:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if not 0 <= self.noise_step < NUM_STEPS:
            raise ValueError(f"noise_step must be in [0, {NUM_STEPS - 1}], got {self.noise_step}")
        if self.branch not in ("auto", "rows", "separate"):
            raise ValueError(f"branch must be auto, rows or separate, got {self.branch!r}")


def contrast(scores: torch.Tensor, noised: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``(B, V)`` VCD scores from the clean and noised branches' ``(B, V)`` logits (computed in float32)."""
    s, n = scores.float(), noised.float()
    cd = (1 + alpha) * s - alpha * n
    cutoff = math.log(beta) + s.max(dim=-1, keepdim=True).values
    return cd.masked_fill(s < cutoff, -math.inf)


class VCD(Method):
    name = "vcd"
    Config = Config

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        return [] if self.config.alpha == 0 else points.logits()

    @hallufix.hookimpl
    def hallufix_declare_branches(self, model):
        if self.config.alpha == 0:
            return []
        c = self.config
        return [Branch(BRANCH, image="same", pixels=lambda x, image: diffuse(x, c.noise_step, image_seed(image, c.seed)),
                       mode=c.branch)]

    @hallufix.hookimpl
    def hallufix_batch_start(self, batch):
        # batch.diagnostics has one entry per main row (the branch rows follow them in the layout)
        self.rows, self.last_kept = batch.batch_size, None

    @hallufix.hookimpl
    def hallufix_logits(self, event):
        c = self.config
        new = contrast(event.scores, event.branches[BRANCH], c.alpha, c.beta)
        self.last_kept = torch.isfinite(new).sum(-1)  # (B,) tokens inside the plausibility cut-off this step
        event.scores = new.to(event.scores.dtype)

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        if self.config.alpha == 0:
            return
        kept = self.last_kept
        for r, diag in enumerate(batch.diagnostics[: self.rows]):
            diag[self.name] = {"noise_step": self.config.noise_step,
                               "plausible_tokens_last_step": None if kept is None else int(kept[r])}
