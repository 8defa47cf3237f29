"""OPERA (Huang et al., CVPR 2024): beam search with an over-trust penalty and retrospection-allocation rollback.

Per beam step (docs/methods/opera.md; the official loop is ``opera_beam_search`` in shikiw/OPERA's vendored
transformers 4.29):

1. The ``k`` candidates of each beam are its top-``k`` raw logits. All are looked ahead in one forward
   (:meth:`~hallufix.decoding.candidates.CandidateEvent.lookahead_many`: ``k`` query rows at the next position,
   each seeing its beam's cache and itself; ``lookahead=each``: one forward per candidate, the official loop), and
   each candidate's last-layer attention row is read through the core's ``attn.probs`` point (``rows="last"``,
   :meth:`~hallufix.events.ProbsEvent.last_rows`): max over heads, then renormalised over all keys.
2. The local window is the response part of the attention map: the generated tokens' rows (kept per beam, reordered
   with the beams) plus the candidate's row, over the response columns. Penalty ``phi`` = the largest column-wise
   product ``1e-7 * prod_i sigma * w_{i,j}`` (:mod:`hallufix_opera.penalty`); for the first ``warmup`` response
   tokens the penalty is minus the candidate row's attention mass on the image instead.
3. The step's logits become ``logit_c - alpha * phi_c`` on the candidates and ``-999`` elsewhere (then
   transformers' ``log_softmax`` and beam selection).
4. Rollback: when, for every beam, the location of the maximum has been the same column ``l`` more than
   ``threshold`` times and ``l >= warmup``, the search restarts from ``l + 1`` generated tokens with the tokens
   chosen there excluded, at most ``k`` times per position (then one position earlier).

``penalty_weight=0`` declares nothing: plain beam search, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import hallufix
from hallufix import points
from hallufix.method import Method
from hallufix_opera.penalty import over_trust


@dataclass
class Config:
    scale_factor: float = 50.0    # sigma (official README / chair_eval.py default 50)
    threshold: int = 15           # r: repeats of one maximum location before a rollback (official default 15)
    num_candidates: int = 5       # k: candidates per beam (official num_attn_candidates 5)
    penalty_weight: float = 1.0   # alpha (official penalty_weights 1); 0 = plain beam search
    warmup: int = 10              # first response tokens using the image-attention term; earliest rollback target
    rollback: str = "auto"        # retrospection rollback: on | off | auto (on for one prompt per generate call,
    #                               off for larger batches: a rollback restarts the whole batch's search)
    layer: str = "last"           # the attention layer (official: the last, outputs.attentions[-1]); or an index
    lookahead: str = "batched"    # batched: the k candidates of every beam in one look-ahead forward (4D mask);
    #                               each: one forward per candidate (the official loop; also where the attention
    #                               kernel takes no 4D mask)
    reuse: bool = True            # batched: the chosen candidates' look-ahead is the next decode step (one forward
    #                               per step; the core keeps it where no other method has decode hooks); false: a
    #                               decode forward per step as the official loop

    def validate(self):
        if self.scale_factor <= 0 or self.num_candidates < 1 or self.threshold < 0 or self.warmup < 0:
            raise ValueError("scale_factor must be > 0, num_candidates >= 1, threshold and warmup >= 0")
        if str(self.rollback).lower() not in ("on", "off", "auto", "true", "false"):
            raise ValueError(f"rollback must be on, off or auto, got {self.rollback!r}")
        if str(self.lookahead).lower() not in ("batched", "each"):
            raise ValueError(f"lookahead must be batched or each, got {self.lookahead!r}")
        if self.penalty_weight < 0:
            raise ValueError(f"penalty_weight must be >= 0, got {self.penalty_weight}")


class OPERA(Method):
    name = "opera"
    Config = Config

    def __init__(self, config: Config | None = None):
        super().__init__(config or Config())
        self.config.validate()

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        c = self.config
        if c.penalty_weight == 0:
            return []
        self.layer = model.num_layers - 1 if str(c.layer) == "last" else int(c.layer)
        if not 0 <= self.layer < model.num_layers:
            raise ValueError(f"opera: layer {c.layer} is outside the model's {model.num_layers} layers")
        return points.attn_probs([self.layer], rows="last", phases={"prefill", "decode"})

    @hallufix.hookimpl
    def hallufix_batch_start(self, batch):
        if self.config.penalty_weight == 0:
            return
        B = batch.batch_size
        mode = {"true": "on", "false": "off"}.get(str(self.config.rollback).lower(), str(self.config.rollback).lower())
        if mode == "on" and B > 1:
            raise ValueError(f"opera: the rollback works on one prompt per generate call (as the official code); "
                             f"got a batch of {B} — use --batch-size 1, or opera.rollback=auto / off")
        self.rollback = mode == "on" or (mode == "auto" and B == 1)
        self.rows = batch.diagnostics
        self.stats = {"steps": 0, "rollbacks": 0, "warmup_steps": 0, "rollback_active": self.rollback,
                      "lookahead": None, "reused_steps": 0}
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None  # (candidates (N, k), their rows (N, k, t + 1))
        self.hist: torch.Tensor | None = None   # (N, n, n) response rows over response columns
        self.snapshots: dict[int, torch.Tensor] = {}
        self.locs: list[torch.Tensor] = []       # per step (N,) the mode over candidates of the max location
        self.rollback_times: dict[int, int] = {}
        self.selections: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.bans: dict[int, list] = {}
        self.latest = None                        # (N, kv) last probed row (head-max, renormalised)
        self.latest_image = None                  # (N,) its attention mass on the image
        self.seen_candidates = False

    @hallufix.hookimpl
    def hallufix_attn_probs(self, event):
        if event.forward.phase == "decode" and not self.seen_candidates:
            raise ValueError("opera acts in beam search only: run with --decoding beam --num-beams 5")
        # (N, n, c): max over heads, renormalised; n = k candidates in a batched look-ahead, else 1 (the new token)
        rows = event.last_rows().max(dim=1).values
        rows = rows / rows.sum(-1, keepdim=True)
        self.latest = rows if event.forward.lookahead else rows[:, 0]
        self.latest_image = (rows * event.visual_keys[:, None, :rows.shape[-1]]).sum(-1)
        if not event.forward.lookahead:
            self.latest_image = self.latest_image[:, 0]

    @hallufix.hookimpl
    def hallufix_beam_candidates(self, event):
        c = self.config
        self.seen_candidates = True
        t, P = event.step, event.prompt_len
        if event.banned is not None:  # the redone step after a rollback: no penalty, the chosen tokens excluded
            self.hist = self.snapshots[t]
            self.locs = self.locs[: t + 1]
            return
        if t > 0 and event.parents is not None:  # the selection made at step t - 1
            self.selections[t - 1] = (event.parents, event.input_ids[:, P + t - 1])
        self._append_row(event, t, P)
        self.snapshots[t] = self.hist
        logits = event.logits
        k = min(c.num_candidates, logits.shape[-1])
        cand_logits, cand = logits.topk(k, dim=-1)  # (N, k)
        cand_rows, image = self._look_ahead(event, cand, P, t)  # (N, k, t + 1) over the response columns, (N, k)
        N = cand_rows.shape[0]
        past = torch.nn.functional.pad(self.hist, (0, 1))[:, None].expand(N, k, t, t + 1)
        window = torch.cat([past, cand_rows[:, :, None, :]], dim=2)  # (N, k, t + 1, t + 1)
        score, loc = over_trust(window, c.scale_factor)
        if t + 1 <= c.warmup:
            penalty = -image
            self.stats["warmup_steps"] += 1
        else:
            penalty = score
        new = torch.full_like(logits, -999.0)
        new.scatter_(1, cand, cand_logits - c.penalty_weight * penalty)
        event.logits = new
        self.stats["steps"] += 1
        step_loc = loc.mode(dim=-1).values  # (N,)
        self.locs.append(step_loc)
        if self.rollback:
            self._maybe_rollback(event, t, step_loc)

    def _look_ahead(self, event, cand: torch.Tensor, P: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each candidate's attention row over the response columns ``(N, k, t + 1)`` (its own column last) and
        its attention mass on the image ``(N, k)``: one batched look-ahead forward, or one forward per candidate
        (``lookahead=each``, or an attention kernel without 4D masks)."""
        if str(self.config.lookahead).lower() == "batched" and event.can_lookahead_many:
            self.stats["lookahead"] = "batched"
            event.lookahead_many(cand, logits=False, keep=bool(self.config.reuse))  # OPERA reads the attention
            rows = self.latest[:, :, P:P + t + 1]
            self.prev = (cand, rows) if event.kept is not None else None
            return rows, self.latest_image
        self.stats["lookahead"] = "each"
        rows, image = [], []
        for j in range(cand.shape[1]):
            event.lookahead(cand[:, j])
            rows.append(self.latest[:, P:P + t + 1])
            image.append(self.latest_image)
        return torch.stack(rows, 1), torch.stack(image, 1)

    def _append_row(self, event, t: int, P: int) -> None:
        """The generated tokens' rows: the current forward's probed row is the row of the last generated token;
        after a reused step (no forward ran) that row is the chosen candidate's row of the previous look-ahead."""
        if t == 0:
            self.hist = self.latest.new_zeros(self.latest.shape[0], 0, 0)
            return
        if event.reused:
            cand, rows = self.prev  # of the parent rows, before the reorder
            slot = (cand[event.parents] == event.input_ids[:, P + t - 1, None]).int().argmax(-1)
            row = rows[event.parents, slot]  # (N, t)
            self.stats["reused_steps"] += 1
        else:
            row = self.latest[:, P:P + t]
        hist = self.hist if event.parents is None else self.hist[event.parents]
        hist = torch.nn.functional.pad(hist, (0, 1))  # one more response column
        self.hist = torch.cat([hist, row[:, None]], dim=1)  # (N, t, t)

    def _maybe_rollback(self, event, t: int, step_loc: torch.Tensor) -> None:
        c = self.config
        target = int(step_loc.mode().values)
        gathered = torch.stack(self.locs, -1)  # (N, steps)
        if not bool(((gathered == target).sum(-1) > c.threshold).all()) or target < c.warmup:
            return
        pos = target + 1
        if self.rollback_times.get(pos, 0) >= c.num_candidates:
            pos -= 1
            if self.rollback_times.get(pos, 0) >= c.num_candidates:
                return
        if pos >= t or pos not in self.selections:
            return
        self.rollback_times[pos] = self.rollback_times.get(pos, 0) + 1
        self.stats["rollbacks"] += 1
        event.rollback(pos, ban=self._ban(pos))

    def _ban(self, pos: int) -> torch.Tensor:
        """``(N, m)`` tokens excluded at ``pos`` on the restored rows (``-1`` = none): the tokens chosen there, on
        the rows they were chosen from, accumulated over the rollbacks to ``pos`` (the official reject list)."""
        parents, tokens = self.selections[pos]
        # bans recorded for later positions belong to the abandoned search (the official loop means to clear
        # them; its code clears pos + 1 only, see docs/methods/opera.md)
        self.bans = {p: b for p, b in self.bans.items() if p <= pos}
        self.bans.setdefault(pos, []).append((parents, tokens))
        N = parents.shape[0]
        per_row: list[list[int]] = [[] for _ in range(N)]
        for rows, toks in self.bans[pos]:
            for r, tok in zip(rows.tolist(), toks.tolist()):
                per_row[r].append(tok)
        m = max(1, max(len(x) for x in per_row))
        return torch.tensor([x + [-1] * (m - len(x)) for x in per_row], device=parents.device)

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        if self.config.penalty_weight == 0:
            return
        for d in batch.diagnostics:
            d["opera"] = dict(self.stats)
