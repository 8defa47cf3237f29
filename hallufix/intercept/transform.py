"""The score-transform kernel: layers where a method declared ``attn_transform.{i}``.

A score transform is any function of the raw pre-softmax scores, not only an additive bias (PAI's ``s + alpha|s|``
on image columns, ClearSight's multiplicative scaling), so the scores of the declared rows must exist as a tensor:

1. keys / values through the layer's ``kv`` hook, if any;
2. for the declared rows ``R`` (``last``: the final query row; ``text``: the text rows; at a decode step the single
   row) and any probed rows: ``s = q_R K^T * scale + mask_R + bias_R`` in float32, clamped at float32's finite
   minimum (what eager attention does), then ``ScoresEvent`` through every transform hook of the layer (chained),
   on the declared rows only;
3. ``P = softmax(s)`` in float32; probes at this layer see those ``P`` (after the transform); the rows' outputs are
   ``P @ V`` exactly;
4. every other row: the fused kernel (SDPA, causal; with a float mask only where a bias applies to it);
5. per-head outputs through the ``heads`` hook.

Called from :func:`hallufix.intercept.attention.hallufix_attention` when the layer has a transform caller in the
current phase; the rest of the model is untouched.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from hallufix.events import KVEvent, LayerEvent, ProbsEvent, _conform


class ScoresEvent(LayerEvent):
    """``attn_transform.{i}``: ``scores`` ``(B, H, R, kv)`` float32 of the query rows ``rows`` ``(R,)``
    (indices into this forward's ``q`` rows). Assign ``event.scores = new`` (same shape; stored as float32 on the
    model's device). :meth:`row_mask` marks rows of one kind; :attr:`visual_keys` ``(B, kv)`` the image columns."""

    def __init__(self, scores: torch.Tensor, rows: torch.Tensor, **kw):
        super().__init__(**kw)
        self._scores, self.rows, self.edited = scores, rows, False

    @property
    def scores(self) -> torch.Tensor:
        return self._scores

    @scores.setter
    def scores(self, new: torch.Tensor) -> None:
        old = self._scores
        self._scores = _conform(f"layer {self.layer}: transformed scores", new, old.shape, old.device, old.dtype)
        self.edited = True

    def row_mask(self, kind: str) -> torch.Tensor:
        """``(B, R)`` bool: which rows are of ``kind`` (``last`` or ``text``)."""
        B, q = self.layout.batch_size, self.forward.q_len
        if kind == "last":
            return (self.rows >= q - self.forward.last_rows)[None, :].expand(B, -1)
        if kind == "text":
            return self.text_rows[:, self.rows]
        raise ValueError(f"unknown row kind {kind!r} (last, text)")


def _rows(kinds: set, q_len: int, fwd, layout, device) -> torch.Tensor:
    """``(R,)`` row indices for the row kinds in ``kinds`` (``last``, ``text``, ``all``)."""
    if q_len == 1:
        return torch.zeros(1, dtype=torch.long, device=device)
    sel = torch.zeros(q_len, dtype=torch.bool, device=device)
    if "all" in kinds:
        sel[:] = True
    if "last" in kinds:
        sel[q_len - fwd.last_rows:] = True  # every candidate row of a beam look-ahead forward
    if "text" in kinds:
        sel |= layout.text_rows(fwd.positions_on(device)).any(0)
    return sel.nonzero().squeeze(1)


def _mask(attention_mask, rows, q_len, kv_len, terms, dtype) -> torch.Tensor:
    """Additive mask ``(B|1, 1, R, kv)`` of ``rows``: causal / padding plus the bias terms on their rows, clamped."""
    from hallufix.intercept.kernels import row_mask

    m = row_mask(attention_mask, rows, q_len, kv_len, dtype)
    for col_bias, sel_rows in terms:
        sel = sel_rows[:, rows][:, None, :, None]
        m = torch.where(sel, m + col_bias[:, :, None, :].to(dtype), m)
    return m.clamp(min=torch.finfo(dtype).min)


def run_transform_layer(st, plan, module, query, key, value, attention_mask, scaling, dropout, kwargs):
    """One layer with a score transform (see the module docstring). Returns ``(output (B, q, H, D), None)``."""
    from hallufix.intercept.attention import _bias_terms
    from hallufix.intercept.heads import apply_heads

    fwd = st.forward
    phase, layer = fwd.phase, plan.layer
    q_len, kv_len = query.shape[2], key.shape[2]
    ev_kw = dict(layer=layer, forward=fwd, layout=st.layout, model=st.info, dtype=query.dtype)
    scaling = module.scaling if scaling is None else scaling
    dev = query.device

    work = plan.work[phase]
    if work.kv is not None:
        ev = KVEvent(key, value, **ev_kw)
        work.kv(event=ev)
        key, value = ev.key, ev.value
        st.fired(plan.names["attn_kv"])

    terms = _bias_terms(st, plan, work, ev_kw) if work.bias else []  # per_forward terms from their cache
    t_kinds, p_kinds = set(work.transform_rows), set(work.probe_rows)
    rows_t = _rows(t_kinds, q_len, fwd, st.layout, dev)
    rows_u = _rows(t_kinds | p_kinds, q_len, fwd, st.layout, dev)  # transformed rows and probed rows
    n_rep = module.num_key_value_groups
    k_rep, v_rep = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    f32 = torch.float32
    scores = torch.matmul(query[:, :, rows_u].to(f32), k_rep.to(f32).transpose(-1, -2)) * scaling
    scores = (scores + _mask(attention_mask, rows_u, q_len, kv_len, terms, f32)).clamp(min=torch.finfo(f32).min)

    # the declared rows through the transform hooks (positions of rows_t inside rows_u)
    pos = torch.full((q_len,), -1, dtype=torch.long, device=dev)
    pos[rows_u] = torch.arange(rows_u.numel(), device=dev)
    at = pos[rows_t]
    whole = at.numel() == rows_u.numel()
    ev = ScoresEvent(scores if whole else scores[:, :, at], rows_t, **ev_kw)
    work.transform(event=ev)
    st.fired(plan.names["attn_transform"])
    if ev.edited:
        if whole:
            scores = ev.scores
        else:
            scores = scores.clone()
            scores[:, :, at] = ev.scores
    probs = torch.softmax(scores, dim=-1)

    if p_kinds:
        rows_p = _rows(p_kinds, q_len, fwd, st.layout, dev)
        pe = ProbsEvent(probs[:, :, pos[rows_p]], rows_p, **ev_kw)
        work.probs(event=pe)
        st.fired(plan.names["attn_probs"])
        if pe.edited:
            if not st.table.editing_probes(layer):
                raise RuntimeError(f"layer {layer}: a method edited attention probabilities without declaring "
                                   f"attn_probs(..., edits=True)")
            probs = probs.clone()
            probs[:, :, pos[rows_p]] = pe.probs
    out_u = torch.matmul(probs.to(v_rep.dtype), v_rep).transpose(1, 2)  # (B, R_u, H, D)

    if rows_u.numel() == q_len:
        out = out_u.contiguous()
        st.count_path(layer, "transform")
    else:
        # every other row: the fused causal kernel, except rows a bias applies to (SDPA with their float mask)
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                        **kwargs)
        out = out.clone()
        biased = torch.zeros(q_len, dtype=torch.bool, device=dev)
        for _, sel_rows in terms:
            biased |= sel_rows.any(0)
        biased[rows_u] = False
        if bool(biased.any()):
            rows_b = biased.nonzero().squeeze(1)
            out_b = F.scaled_dot_product_attention(query[:, :, rows_b], key, value,
                                                   attn_mask=_mask(attention_mask, rows_b, q_len, kv_len, terms,
                                                                   query.dtype),
                                                   scale=scaling, enable_gqa=n_rep > 1)
            out[:, rows_b] = out_b.transpose(1, 2)
        out[:, rows_u] = out_u.to(out.dtype)
        st.count_path(layer, "sdpa+transform")
    return apply_heads(st, plan, module, work, out, ev_kw), None
