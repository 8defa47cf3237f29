"""DoLa -- Decoding by Contrasting Layers (Chuang et al., ICLR 2024), on the core's logit lens.

Per generation step and batch row (docs/methods/dola.md has the equations and sources):

1. Candidate premature layers ``J`` (a bucket of early layers, translated to the model's depth; ``j`` is the
   residual stream entering decoder layer ``j``, ``j = 0`` the embeddings): ``q_j = softmax(lm_head(h_j))`` from the
   logit lens at the last position; the mature layer is the model's own output ``q_N`` (the step's scores).
2. Dynamic premature layer ``M = argmax_j JSD(q_N || q_j)`` (per row; ``divergence=official``: the official
   code's ``1/2 KL(M||q_N) + 1/2 KL(M||q_j)``).
3. Adaptive plausibility constraint: ``V_head = {v : q_N(v) >= alpha_apc * max_w q_N(w)}``.
4. ``F(v) = log q_N(v) - alpha * log q_M(v)`` on ``V_head``, ``-inf`` elsewhere (``alpha = 1``: the paper).
5. Repetition penalty ``theta`` (Keskar et al. 2019) on ``F`` over the row's tokens so far (prompt and generated,
   padding excluded), as the paper recommends for open-ended generation (theta = 1.2).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
from transformers import RepetitionPenaltyLogitsProcessor

import hallufix
from hallufix import points as P
from hallufix.config import parse_layers
from hallufix.method import Method


@dataclass
class Config:
    layers: str = "low"              # premature bucket: low | high | an explicit 0-based list/range of hidden states
    alpha: float = 1.0               # contrast strength (1: the paper's log q_N - log q_M; 0 with penalty 1: no-op)
    relative_top: float = 0.1        # adaptive plausibility constraint (the paper's alpha = 0.1)
    repetition_penalty: float = 1.2  # theta, applied after the contrast (the paper's recommendation; 1 = off)
    premature_norm: bool = False     # apply the final norm before lm_head for premature layers (official code: no)
    divergence: str = "jsd"          # premature-layer choice: jsd (the paper's equation) | official (the code's form)

    def validate(self):
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if not 0 < self.relative_top <= 1:
            raise ValueError(f"relative_top must be in (0, 1], got {self.relative_top}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.divergence not in ("jsd", "official"):
            raise ValueError(f"divergence must be jsd or official, got {self.divergence!r}")


def bucket(spec: str, L: int, tied: bool) -> list[int]:
    """Candidate premature layers (hidden-state indices ``0..L-1``) of an ``L``-layer model.

    ``low`` / ``high`` follow transformers' DoLa rule, which translates the paper's buckets to any depth: for
    ``L <= 40`` ``range(start, L // 2, 2)`` and ``range(L // 2, L, 2)``, deeper models ``range(start, 20, 2)`` and
    ``range(L - 20, L, 2)``; ``start`` skips the embeddings when the output head is tied to them (their lens is
    then close to the identity): 2 for ``L > 2``, 1 for ``L == 2``. An explicit list is taken as given (layers
    ``< L``)."""
    if spec == "high":
        return list(range(L // 2, L, 2)) if L <= 40 else list(range(L - 20, L, 2))
    if spec == "low":
        start = 0 if not tied else (2 if L > 2 else 1 if L == 2 else 0)
        if start >= L // 2:
            return [start] if start < L else [0]
        return list(range(start, L // 2, 2)) if L <= 40 else list(range(start, 20, 2))
    return [j for j in parse_layers(spec, L) if j < L]


#: floor for the log-probabilities entering ``p log p``: below the log of any positive float32 / float64 (about
#: -103 / -745), so it changes only ``-inf`` (``p = 0``), whose term must be ``0``, not ``0 * -inf = nan``
_LOG_FLOOR = -1e4


def contrast(logp_final: torch.Tensor, logp_premature: torch.Tensor, alpha: float,
             relative_top: float) -> torch.Tensor:
    """``(B, V)`` float32: ``log q_N - alpha log q_M`` on the plausible head of ``q_N``, ``-inf`` elsewhere, from
    the log-probabilities ``log q_N`` and ``log q_M`` ``(B, V)`` (``log_softmax`` of the scores)."""
    thresh = logp_final.amax(-1, keepdim=True) + math.log(relative_top)
    out = logp_final - alpha * logp_premature if alpha != 1 else logp_final - logp_premature
    return out.masked_fill_(logp_final < thresh, float("-inf"))


def premature_choice(logp_final: torch.Tensor, logp_stacked: torch.Tensor, divergence: str = "jsd") -> torch.Tensor:
    """``(B,)`` index into the candidates farthest from the mature distribution per row (ties: the first).

    ``logp_final`` ``(B, V)`` and ``logp_stacked`` ``(k, B, V)`` float32: ``log_softmax`` of the mature scores and
    of the ``k`` candidates' lens logits (computed once by the caller, which reuses them in :func:`contrast`).

    ``jsd``: the paper's ``JSD(q_N || q_j) = 1/2 KL(q_N || M) + 1/2 KL(q_j || M)``, ``M = (q_N + q_j) / 2``. With
    ``S = q_N + q_j`` (so ``M = S / 2`` and ``sum S = 2``) it is ``1/2 sum (q_N log q_N + q_j log q_j - S log S)
    + log 2``: the ``q_N`` term and ``log 2`` are the same for every candidate, so the choice compares
    ``sum_v q_j log q_j - S log S`` (``0 log 0 = 0``: tokens an earlier processor banned, ``q_N = 0``, and
    probabilities that underflow add nothing). ``official``: what the official code and transformers compute,
    ``1/2 KL(M || q_N) + 1/2 KL(M || q_j)`` (``F.kl_div(log q, M)``), over the tokens the mature scores leave
    finite (there no processor runs before the contrast, so no token is banned)."""
    p_j = logp_stacked.exp()
    if divergence == "jsd":
        total = p_j + logp_final.exp()  # S = 2 M
        per_token = (p_j * logp_stacked).sub_(total * total.log().clamp_min(_LOG_FLOOR))  # lens logits are finite
    else:
        m = (p_j + logp_final.exp()).mul_(0.5)
        per_token = m * m.log().clamp_min(_LOG_FLOOR) - (logp_final + logp_stacked).mul_(0.5).mul_(m)
        per_token = torch.where(torch.isfinite(logp_final), per_token, 0.0)
    return per_token.sum(-1).argmax(0)


class DoLa(Method):
    name = "dola"
    Config = Config

    def __init__(self, config: Config | None = None):
        super().__init__(config or Config())
        self.config.validate()
        self._candidates: dict[bool, list[int]] = {}
        self._chosen: list[Counter] = []
        self._penalty = None
        self._batch = None

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        cfg, L = self.config, model.num_layers
        if cfg.alpha == 0 and cfg.repetition_penalty == 1:
            return []
        self._penalty = (RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty)
                         if cfg.repetition_penalty != 1 else None)
        if cfg.alpha == 0:
            return P.logits()
        self._candidates = {tied: bucket(str(cfg.layers), L, tied) for tied in (False, True)}
        if not self._candidates[False]:
            raise ValueError(f"dola: layers={cfg.layers!r} selects no layer below the {L} of {model.display_name}")
        return P.logit_lens(sorted(set(self._candidates[False]) | set(self._candidates[True]))) + P.logits()

    @hallufix.hookimpl
    def hallufix_batch_start(self, batch):
        self._chosen = [Counter() for _ in range(batch.batch_size)]
        self._batch = batch  # batch_start runs before the processor: its layout is filled in before the prefill

    @hallufix.hookimpl
    def hallufix_logit_lens(self, event):
        event.forward.memo.setdefault(("dola", id(self)), {})[event.layer] = event
        if event.layer in self._candidates[bool(event.lens.tied)]:  # the rows ride on the model's head product
            event.prefetch(norm=self.config.premature_norm)

    @hallufix.hookimpl
    def hallufix_logits(self, event):
        cfg = self.config
        scores = event.scores.float()
        if cfg.alpha > 0:
            lens_events = event.forward.memo.get(("dola", id(self)), {})
            tied = bool(next(iter(lens_events.values())).lens.tied) if lens_events else False
            layers = [j for j in self._candidates[tied] if j in lens_events]
            if len(layers) != len(self._candidates[tied]):
                missing = sorted(set(self._candidates[tied]) - set(layers))
                raise RuntimeError(f"dola: the logit lens of layers {missing} did not run in this forward")
            # (k, B, V): computed with the model's head call (or, where the rows could not join it, in one
            # separate product for every candidate); the main rows only (branch rows, if any, follow them)
            stacked = torch.stack([lens_events[j].logits(norm=cfg.premature_norm)[: scores.shape[0]]
                                   for j in layers])
            logp_final, logp_stacked = scores.log_softmax(-1), stacked.log_softmax(-1)
            if len(layers) == 1:
                choice = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
            else:
                choice = premature_choice(logp_final, logp_stacked, cfg.divergence)
            rows = torch.arange(scores.shape[0], device=scores.device)
            scores = contrast(logp_final, logp_stacked[choice, rows], cfg.alpha, cfg.relative_top)
            beams = self._batch.beams  # under beam search a question's beams are consecutive rows
            for row, c in enumerate(choice.tolist()):
                self._chosen[row // beams][layers[c]] += 1
        if self._penalty is not None:
            scores = self._penalty(self._own_tokens(event.input_ids, event.layout), scores)
        event.scores = scores

    def _own_tokens(self, input_ids: torch.Tensor, layout) -> torch.Tensor:
        """``input_ids`` with left padding replaced by the row's last token, so the penalty sees each row's own
        tokens only (a padded row penalises exactly what it would alone). ``layout``: the logits event's, over
        the rows the scores cover (the main rows when branch rows ride in the batch; each beam's row)."""
        valid = layout.valid
        if valid is None or bool(valid.all()):
            return input_ids
        if valid.shape[0] != input_ids.shape[0]:  # beams / several sequences per prompt: rows repeat in order
            valid = valid.repeat_interleave(input_ids.shape[0] // valid.shape[0], dim=0)
        full = torch.ones_like(input_ids, dtype=torch.bool)
        full[:, : valid.shape[1]] = valid
        return torch.where(full, input_ids, input_ids[:, -1:])

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        if not self._candidates:
            return
        for row, counts in enumerate(self._chosen):
            batch.diagnostics[row]["dola"] = {"premature_layers": {str(k): v for k, v in sorted(counts.items())}}
