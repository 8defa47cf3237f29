"""OPERA against an independent, slow, eager implementation written from the paper's equations (Huang et al., CVPR
2024, Eq. 2-6; official defaults from shikiw/OPERA), plus its contract, strength 0 == plain beam search bit for bit,
the candidate loop == transformers' beam search, and stacking with clva."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers.integrations.sdpa_attention import repeat_kv

from hallufix import hookimpl
from hallufix.decoding import Decoding
from hallufix.testing import MethodContract
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix.testing.reference import attention_as

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
BEAM = Decoding.from_args("beam", num_beams=3)
#: a setting that exercises every branch on tiny random models: image term for 2 tokens, then the column products
SETTING = dict(scale_factor=300.0, threshold=1, num_candidates=3, penalty_weight=1.0, warmup=2)
#: a key column (generated token 3) every later row attends to strongly: its column product dominates, so the
#: retrospection fires (random tiny models spread attention evenly and never trigger it)
SINK, SINK_BIAS = 3, 4.0
OVERRIDES = [f"{k}={v}" for k, v in SETTING.items()]


class _LastLayer:
    """Eager attention that keeps the last layer's full probability matrix (B, H, q, kv) of the latest forward."""

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


class EagerOPERA:
    """One prompt, no KV cache: every score is a fresh full forward of prompt + beam (+ candidate). Beam search as
    transformers' (2 * beams continuations, no EOS reachable: min_new_tokens = max_new_tokens). For a candidate c of
    beam y: w = the last layer's attention of prompt + y + c, max over heads, rows renormalised; the local window is
    its response block W (rows and columns >= P); phi(c) = max_j 1e-7 prod_{i>=j} sigma W[i, j] (Eq. 3-4), or
    minus c's attention on the image while |y| + 1 <= warmup; logit'(c) = logit(c) - alpha phi(c), -999 for
    non-candidates (Eq. 5). Retrospection (Eq. 6): l = the most frequent arg-max column; when every beam's history
    of per-step arg-max locations holds l more than r times and l >= warmup, restart at l + 1 tokens (at most k
    times per position, else one earlier) with the tokens chosen there banned on their rows."""

    def __init__(self, session, image, question, s: dict, beams: int, sink: bool = False):
        self.s, self.sess, self.beams = s, session, beams
        self.inputs = session.adapter.inputs(session.processor, [[image]], [question], session.device)
        self.layout = session.adapter.layout(session.model, self.inputs, [[image]])
        self.P = self.inputs["input_ids"].shape[1]
        self.attn = _LastLayer(session.info.num_layers - 1, self.P + SINK if sink else None)
        self.sink = sink

    def forward(self, tokens: list[int]):
        ids = self.inputs["input_ids"]
        extra = torch.tensor([tokens], dtype=ids.dtype, device=ids.device)
        kw = {}
        for key, val in self.inputs.items():
            if torch.is_tensor(val) and val.shape == ids.shape:
                fill = extra if key == "input_ids" else torch.full_like(extra, 1 if key == "attention_mask" else 0)
                val = torch.cat([val, fill.to(val.dtype)], 1)
            kw[key] = val
        out = self.sess.model(**kw, use_cache=False)
        return out.logits[0, -1].float(), self.attn.probs[0]  # (V,), (H, L, L)

    def head_max(self, A):
        m = A.max(0).values  # (L, L)
        return m / m.sum(-1, keepdim=True)

    def plain(self, tokens: list[int]):
        logits, _ = self.forward(tokens)
        if self.sink:
            logits[self.sess.info.image_token_id] = -1e4
        return logits

    def step_scores(self, tokens: list[int]):
        """(modified logits (V,), arg-max location per candidate (k,))."""
        s, P = self.s, self.P
        logits, _ = self.forward(tokens)
        if self.sink:  # as the _Sink plugin: the image token never becomes a candidate
            logits[self.sess.info.image_token_id] = -1e4
        k = s["num_candidates"]
        top, cand = logits.topk(k)
        pens, locs = [], []
        for j in range(k):
            _, A = self.forward(tokens + [int(cand[j])])
            w = self.head_max(A)
            W = w[P:, P:]  # (n, n), n = len(tokens) + 1
            n = W.shape[0]
            cols = [1e-7 * torch.prod(s["scale_factor"] * W[j2:, j2]) for j2 in range(n)]
            cols = torch.stack(cols)
            phi, loc = cols.max(0)
            image = (w[-1, :P] * self.layout.visual[0].float()).sum()
            pens.append(-image if n <= s["warmup"] else phi)
            locs.append(int(loc))
        new = torch.full_like(logits, -999.0)
        new[cand] = top - s["penalty_weight"] * torch.stack(pens)
        return new, locs

    def run(self, T: int) -> list[int]:
        s, nb = self.s, self.beams
        rows = [([], 0.0)] * nb  # (tokens, score); rows 1.. start at -1e9 as transformers'
        scores0 = [0.0] + [-1e9] * (nb - 1)
        rows = [([], scores0[i]) for i in range(nb)]
        states, loc_hist, times, chosen, bans = {}, [], Counter(), {}, {}
        t, ban = 0, None
        while t < T:
            states[t] = rows
            outs = [self.step_scores(toks) if ban is None else (self.plain(toks), None) for toks, _ in rows]
            if ban is None:
                locs = [min(c for c, m in Counter(lc).items() if m == max(Counter(lc).values())) for _, lc in outs]
                loc_hist = loc_hist[:t] + [locs]
                cnt = Counter(locs)
                target = min(c for c, m in cnt.items() if m == max(cnt.values()))
                rolled = False
                if all(sum(h[r] == target for h in loc_hist) > s["threshold"] for r in range(nb)) \
                        and target >= s["warmup"]:
                    pos = target + 1
                    if times[pos] >= s["num_candidates"]:
                        pos -= 1
                    if times[pos] < s["num_candidates"] and pos < t and pos in chosen:
                        times[pos] += 1
                        bans.setdefault(pos, []).extend(chosen[pos])
                        rows, t, ban = states[pos], pos, bans[pos]
                        loc_hist = loc_hist[: pos + 1]
                        rolled = True
                if rolled:
                    continue
            cont = []
            for r, ((toks, score), (lg, _)) in enumerate(zip(rows, outs)):
                if ban is not None:
                    lg = lg.clone()
                    for row, tok in ban:
                        if row == r:
                            lg[tok] = torch.finfo(lg.dtype).min
                lp = torch.log_softmax(lg, -1)
                vals, idx = (lp + score).topk(2 * nb)
                cont += [(float(v), r, int(i)) for v, i in zip(vals, idx)]
            ban = None
            cont.sort(key=lambda x: -x[0])
            cont = cont[: 2 * nb][:nb]
            chosen[t] = [(r, tok) for _, r, tok in cont]
            rows = [(rows[r][0] + [tok], v) for v, r, tok in cont]
            t += 1
        return rows[0][0]


def _reference(session, image, question, setting, beams, T, sink=False):
    ref = EagerOPERA(session, image, question, setting, beams, sink)
    with attention_as(session, ref.attn), torch.inference_mode():
        return ref.run(T)


def _opera(session, images, questions, overrides, T, decoding=BEAM, plugins=("opera",)):
    run = session.start(list(plugins), {"opera": overrides})
    return run.generate(images, questions, max_new_tokens=T, min_new_tokens=T, decoding=decoding)


@pytest.mark.parametrize("family", FAMILIES)
def test_equals_eager_reference(family):
    """Identical tokens to the eager reference, penalty and rollback on (one prompt per call, mixed image size)."""
    s = tiny_session(family)
    images = tiny_images(2, mixed=True)[1:]
    T = 10
    out = _opera(s, images, [QUESTIONS[1]], OVERRIDES, T)[0]
    ref = _reference(s, images[0], QUESTIONS[1], SETTING, BEAM.num_beams, T)
    assert out.token_ids.tolist() == ref
    assert out.diagnostics["opera"]["steps"] >= T


class _Sink:
    """Adds SINK_BIAS to the last layer's pre-softmax scores of the key of generated token SINK (every row)."""

    name = "sink"

    @hookimpl
    def hallufix_configure(self, model):
        from hallufix import points

        self.layer, self.image = model.num_layers - 1, model.image_token_id
        return points.attn_bias([self.layer], phases={"decode"})

    @hookimpl
    def hallufix_beam_candidates(self, event):  # (typed first) keeps the image token out of the candidates
        event.logits = event.logits.index_fill(1, torch.tensor([self.image], device=event.logits.device), -1e4)

    @hookimpl
    def hallufix_attn_bias(self, event):
        key = event.layout.prompt_len + SINK
        if event.kv_len > key:
            bias = torch.zeros(event.visual_keys.shape[0], 1, event.kv_len, device=event.device)
            bias[..., key] = SINK_BIAS
            event.add(bias, rows=torch.ones(bias.shape[0], event.forward.q_len, dtype=torch.bool,
                                            device=event.device))


def test_rollback_happens_and_changes_the_search():
    """With an attention sink on generated token 3 the retrospection fires: the diagnostics count restarts (each
    redoes steps), none without rollback, and the restarted search is deterministic."""
    s = tiny_session("llava")
    image, q = tiny_images(1), [QUESTIONS[0]]
    setting = [f"{k}={v}" for k, v in dict(SETTING, scale_factor=150.0).items()]

    def go(extra):
        run = s.start([_Sink(), "opera"], {"opera": setting + extra})
        return run.generate(image, q, max_new_tokens=10, min_new_tokens=10, decoding=BEAM)[0]

    on, again, off = go(["rollback=on"]), go(["rollback=on"]), go(["rollback=off"])
    assert on.diagnostics["opera"]["rollbacks"] > 0 and off.diagnostics["opera"]["rollbacks"] == 0
    assert torch.equal(on.token_ids, again.token_ids) and on.diagnostics == again.diagnostics
    assert on.diagnostics["opera"]["steps"] > off.diagnostics["opera"]["steps"] == 10


def test_penalty_changes_the_answer_as_the_reference():
    """A prompt where the over-trust term changes the beam's answer (not only the candidate cut): OPERA differs
    from plain beam search and from OPERA at a smaller sigma, and equals the reference."""
    s = tiny_session("llava")
    image, q = tiny_images(1), [QUESTIONS[0]]
    out = _opera(s, image, q, OVERRIDES, 10)[0].token_ids.tolist()
    weak = _opera(s, image, q, [o for o in OVERRIDES if not o.startswith("scale")] + ["scale_factor=150"], 10)[0]
    plain = s.start([]).generate(image, q, max_new_tokens=10, min_new_tokens=10, decoding=BEAM)[0]
    assert out != plain.token_ids.tolist() and out != weak.token_ids.tolist()
    assert out == _reference(s, image[0], q[0], SETTING, BEAM.num_beams, 10)


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_zero_is_plain_beam_search_bit_for_bit(family):
    s = tiny_session(family)
    images, qs = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    base = s.start([]).generate(images, qs, max_new_tokens=5, decoding=BEAM, output_logits=True)
    zero = s.start(["opera"], {"opera": ["penalty_weight=0"]}).generate(images, qs, max_new_tokens=5,
                                                                        decoding=BEAM, output_logits=True)
    for a, b in zip(base, zero):
        assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.logits, b.logits)


class _Watcher:
    """A candidate hook that looks every beam's runner-up ahead and changes nothing."""

    name = "watcher"

    @hookimpl
    def hallufix_configure(self, model):
        from hallufix import points

        return points.logits()

    @hookimpl
    def hallufix_logits(self, event):
        pass

    @hookimpl
    def hallufix_beam_candidates(self, event):
        event.lookahead(event.logits.topk(2, -1).indices[:, 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_candidate_loop_is_transformers_beam_search(family):
    """The candidate-hook loop (with look-ahead forwards) gives transformers' _beam_search bit for bit on a
    left-padded batch of mixed image sizes."""
    s = tiny_session(family)
    images, qs = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    base = s.start([]).generate(images, qs, max_new_tokens=5, decoding=BEAM, output_logits=True)
    watched = s.start([_Watcher()]).generate(images, qs, max_new_tokens=5, decoding=BEAM, output_logits=True)
    for a, b in zip(base, watched):
        assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.logits, b.logits)


def test_stacks_with_clva():
    """opera + clva: clva's bias reaches the look-ahead rows; the stack runs, differs from opera alone, and is
    deterministic."""
    s = tiny_session("llava")
    images, qs = tiny_images(2), list(QUESTIONS[:2])
    over = OVERRIDES + ["rollback=off"]
    run = s.start(["clva", "opera"], {"opera": over, "clva": ["tau=1.0", "lambda_vis=0.5", "pos_layer=1"]})
    a = run.generate(images, qs, max_new_tokens=6, min_new_tokens=6, decoding=BEAM)
    b = s.start(["clva", "opera"], {"opera": over, "clva": ["tau=1.0", "lambda_vis=0.5", "pos_layer=1"]}
                ).generate(images, qs, max_new_tokens=6, min_new_tokens=6, decoding=BEAM)
    alone = _opera(s, images, qs, over, 6)
    assert all(torch.equal(x.token_ids, y.token_ids) for x, y in zip(a, b))
    assert "clva" in a[0].diagnostics and "opera" in a[0].diagnostics
    assert any(not torch.equal(x.token_ids, y.token_ids) for x, y in zip(a, alone)) or \
        run.hook_stats["fired"].get("attn_probs.1", 0) > 0


def test_refuses_greedy_and_batched_rollback():
    s = tiny_session("llava")
    with pytest.raises(ValueError, match="--decoding beam"):
        s.start(["opera"]).generate(tiny_images(1), [QUESTIONS[0]], max_new_tokens=3)
    with pytest.raises(ValueError, match="batch-size 1"):
        _opera(s, tiny_images(2), list(QUESTIONS[:2]), ["rollback=on"], 3)
    auto = _opera(s, tiny_images(2), list(QUESTIONS[:2]), [], 3)
    assert auto[0].diagnostics["opera"]["rollback_active"] is False


class TestOPERAContract(MethodContract):
    """The contract under beam search: the suite's generate calls run with 3 beams (opera acts there only), the
    rollback off (it needs one prompt per call; batched == single is checked on the penalty)."""

    method = "opera"
    noop = ["penalty_weight=0"]
    active = ["rollback=off", "num_candidates=3"]
    real_active = ["rollback=off", "num_candidates=3"]
    max_new_tokens = 3
    #: float32 only: in bfloat16 / float16 the candidate cut (top-k of the raw logits) flips on rounding ties between
    #: a padded batch and a single row, which moves a token's logit between its value and -999 (measured: 1e3)
    dtypes = ("float32",)

    decoding = BEAM

    def _gen(self, session, plugins, overrides, images=None, questions=None, n=1):
        images = images or tiny_images(n)
        questions = questions or list(QUESTIONS[:n])
        run = session.start(plugins, overrides)
        outs = run.generate(images, questions, max_new_tokens=self.max_new_tokens,
                            min_new_tokens=self.max_new_tokens, output_logits=True, decoding=BEAM)
        return run, outs
