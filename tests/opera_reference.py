"""OPERA's independent, slow, eager reference (Huang et al., CVPR 2024, Eq. 2-6; the rollback as the official
``opera_beam_search`` of shikiw/OPERA), and the attention sink that makes its retrospection fire on tiny models.

The reference never uses a KV cache, hallufix's beam loop or its look-ahead: every score is a fresh eager forward
of the whole sequence (prompt + beam + candidate) through the decoder. The prompt part is the decoder's own input
at prefill (the merged text + image embeddings and the position ids the model computed, captured once from a plain
``model(**inputs)``); each generated token is appended as its token embedding at the next position of every
position row (``max + 1``: Llama's ``P + i``; Qwen2-VL's multimodal rope rows, as ``rope_deltas`` gives them at
decode). So a generated id that happens to be the image placeholder is an ordinary token, as at a decode step of
``generate``, instead of an extra image slot the processor-made inputs cannot fill.
"""
from __future__ import annotations

from collections import Counter

import torch
from transformers.integrations.sdpa_attention import repeat_kv

from hallufix import hookimpl

#: a key column (generated token 3) every later row attends to strongly: its column product dominates, so the
#: retrospection fires (random tiny models spread attention evenly and never trigger it)
SINK, SINK_BIAS = 3, 4.0


class LastLayer:
    """Eager attention that keeps the last layer's full probability matrix (B, H, q, kv) of the latest forward;
    with ``sink_key`` the last layer's scores of that key column get ``SINK_BIAS`` (every row that sees it)."""

    def __init__(self, last: int, sink_key: int | None = None):
        self.last, self.probs, self.sink_key = last, None, sink_key

    def __call__(self, module, q, k, v, mask, scaling=None, dropout=0.0, **kw):
        k, v = repeat_kv(k, module.num_key_value_groups), repeat_kv(v, module.num_key_value_groups)
        scores = (q @ k.transpose(-1, -2)) * scaling
        if mask is not None:
            scores = scores + mask[:, :, :, : k.shape[2]]
        if module.layer_idx == self.last and self.sink_key is not None and k.shape[2] > self.sink_key:
            scores = scores.clone()
            scores[..., self.sink_key] += SINK_BIAS
        A = torch.softmax(scores.float(), -1)
        if module.layer_idx == self.last:
            self.probs = A
        return (A.to(v.dtype) @ v).transpose(1, 2).contiguous(), A


class Sink:
    """The same sink on hallufix's side: ``SINK_BIAS`` on the last layer's pre-softmax score of the key of
    generated token ``SINK``, for every row that sees it. In a batched beam look-ahead forward
    (``forward.lookahead = k``) the new rows are ``k`` candidates that all sit at position ``kv_offset``: when
    that position is token ``SINK``, each candidate's own key (cache slot ``kv_offset + j``) is token ``SINK``
    of its own continuation, so the bias goes on all ``k`` new columns (each row sees only its own)."""

    name = "sink"
    stateless_decode = True  # the bias depends on the forward's positions only: a kept look-ahead carries it

    @hookimpl
    def hallufix_configure(self, model):
        from hallufix import points

        self.layer = model.num_layers - 1
        return points.attn_bias([self.layer], phases={"decode"})

    @hookimpl
    def hallufix_attn_bias(self, event):
        key, fwd = event.layout.prompt_len + SINK, event.forward
        if fwd.lookahead and fwd.kv_offset <= key:
            cols = slice(key, key + fwd.q_len) if fwd.kv_offset == key else None
        else:
            cols = slice(key, key + 1) if event.kv_len > key else None
        if cols is None:
            return
        bias = torch.zeros(event.visual_keys.shape[0], 1, event.kv_len, device=event.device)
        bias[..., cols] = SINK_BIAS
        event.add(bias, rows=torch.ones(bias.shape[0], fwd.q_len, dtype=torch.bool, device=event.device))


def decoder_prompt(session, inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the decoder stack receives at prefill for ``inputs`` (one prompt): ``inputs_embeds (1, P, d)`` and
    ``position_ids`` (``None`` where the decoder makes its own ``arange``), from one plain forward."""
    got = {}

    def grab(module, args, kwargs):
        got.setdefault("embeds", kwargs["inputs_embeds"].detach().clone())
        pos = kwargs.get("position_ids")
        got.setdefault("pos", None if pos is None else pos.detach().clone())

    handle = session.adapter.text_model(session.model).register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode():
            session.model(**inputs, use_cache=False)
    finally:
        handle.remove()
    return got["embeds"], got["pos"]


class EagerOPERA:
    """One prompt, no KV cache: every score is a fresh full forward of prompt + beam (+ candidate). Beam search as
    transformers' (2 * beams continuations; min_new_tokens = max_new_tokens, so EOS gets -inf after the
    log-softmax, as generate's MinNewTokensLengthLogitsProcessor does). For a candidate c of
    beam y: w = the last layer's attention of prompt + y + c, max over heads, rows renormalised; the local window is
    its response block W (rows and columns >= P); phi(c) = max_j 1e-7 prod_{i>=j} sigma W[i, j] (Eq. 3-4), or
    minus c's attention on the image while |y| + 1 <= warmup; logit'(c) = logit(c) - alpha phi(c), -999 for
    non-candidates (Eq. 5).

    Retrospection (Eq. 6, the official loop): l = the most frequent arg-max column (mode over a beam's
    candidates, then over the beams); when every beam's history of per-step locations holds l more than r times
    and l >= warmup, restart at pos = l + 1 generated tokens (if pos was restarted k times already: pos - 1; if
    that too, no restart; none either when pos is not an earlier step). The restart restores the beams of pos,
    drops the locations recorded after pos, and redoes step pos without the penalty, on the plain logits with
    the tokens chosen at pos banned on the rows they were chosen from (accumulated over restarts to pos; bans
    recorded for later positions are dropped, they belong to the abandoned search)."""

    def __init__(self, session, image, question, s: dict, beams: int, sink: bool = False):
        self.s, self.sess, self.beams = s, session, beams
        self.inputs = session.adapter.inputs(session.processor, [[image]], [question], session.device)
        self.layout = session.adapter.layout(session.model, self.inputs, [[image]])
        self.P = self.inputs["input_ids"].shape[1]
        self.embeds, self.pos = decoder_prompt(session, self.inputs)
        self.attn = LastLayer(session.info.num_layers - 1, self.P + SINK if sink else None)
        self.rollbacks = 0
        eos = session.model.generation_config.eos_token_id
        self.eos = torch.tensor([eos] if isinstance(eos, int) else list(eos), dtype=torch.long)

    def forward(self, tokens: list[int]):
        m = self.sess.model
        n = len(tokens)
        ids = torch.tensor([tokens], dtype=torch.long, device=self.embeds.device)
        emb = torch.cat([self.embeds, m.get_input_embeddings()(ids).to(self.embeds.dtype)], 1)
        pos = self.pos
        if pos is not None:  # every position row continues from its own max + 1
            nxt = pos.amax(-1, keepdim=True) + 1 + torch.arange(n, device=pos.device)
            pos = torch.cat([pos, nxt], -1)
        hidden = self.sess.adapter.text_model(m)(inputs_embeds=emb, position_ids=pos, use_cache=False)[0]
        logits = self.sess.adapter.lm_head(m)(hidden[:, -1])
        return logits[0].float(), self.attn.probs[0]  # (V,), (H, L, L)

    @staticmethod
    def head_max(A):
        m = A.max(0).values  # (L, L)
        return m / m.sum(-1, keepdim=True)

    def step_scores(self, tokens: list[int]):
        """(modified logits (V,), arg-max location per candidate (k,))."""
        s, P = self.s, self.P
        logits, _ = self.forward(tokens)
        k = s["num_candidates"]
        top, cand = logits.topk(k)
        pens, locs = [], []
        for j in range(k):
            _, A = self.forward(tokens + [int(cand[j])])
            w = self.head_max(A)
            W = w[P:, P:]  # (n, n), n = len(tokens) + 1
            n = W.shape[0]
            cols = torch.stack([1e-7 * torch.prod(s["scale_factor"] * W[j2:, j2]) for j2 in range(n)])
            phi, loc = cols.max(0)
            image = (w[-1, :P] * self.layout.visual[0].float()).sum()
            pens.append(-image if n <= s["warmup"] else phi)
            locs.append(int(loc))
        new = torch.full_like(logits, -999.0)
        new[cand] = top - s["penalty_weight"] * torch.stack(pens)
        return new, locs

    @staticmethod
    def _mode(values):
        cnt = Counter(values)
        return min(c for c, m in cnt.items() if m == max(cnt.values()))

    def run(self, T: int, rollback: bool = True) -> list[int]:
        s, nb = self.s, self.beams
        rows = [([], 0.0 if i == 0 else -1e9) for i in range(nb)]  # (tokens, score); rows 1.. at -1e9
        states, loc_hist, times, chosen, bans = {}, [], Counter(), {}, {}
        t, ban = 0, None
        while t < T:
            states[t] = rows
            if ban is None:
                outs = [self.step_scores(toks) for toks, _ in rows]
                locs = [self._mode(lc) for _, lc in outs]
                loc_hist = loc_hist[:t] + [locs]
                target = self._mode(locs)
                if rollback and target >= s["warmup"] and \
                        all(sum(h[r] == target for h in loc_hist) > s["threshold"] for r in range(nb)):
                    pos = target + 1
                    if times[pos] >= s["num_candidates"]:
                        pos -= 1
                    if times[pos] < s["num_candidates"] and pos < t:
                        times[pos] += 1
                        self.rollbacks += 1
                        bans = {p: b for p, b in bans.items() if p <= pos}
                        bans.setdefault(pos, []).extend(chosen[pos])
                        rows, t, ban = states[pos], pos, bans[pos]
                        loc_hist = loc_hist[: pos + 1]
                        continue
            else:  # the redone step: plain logits, no penalty
                outs = [(self.forward(toks)[0], None) for toks, _ in rows]
            cont = []
            for r, ((toks, score), (lg, _)) in enumerate(zip(rows, outs)):
                if ban is not None:
                    lg = lg.clone()
                    for row, tok in ban:
                        if row == r:
                            lg[tok] = torch.finfo(lg.dtype).min
                lp = torch.log_softmax(lg, -1)
                lp[self.eos] = -float("inf")  # min_new_tokens = max_new_tokens: generate's MinNewTokens processor
                vals, idx = (lp + score).topk(2 * nb)
                cont += [(float(v), r, int(i)) for v, i in zip(vals, idx)]
            ban = None
            cont.sort(key=lambda x: -x[0])
            cont = cont[: 2 * nb][:nb]
            chosen[t] = [(r, tok) for _, r, tok in cont]
            rows = [(rows[r][0] + [tok], v) for v, r, tok in cont]
            t += 1
        return rows[0][0]
