"""The hallufix attention function: registered once with transformers' ``AttentionInterface`` (and its mask
function with ``AttentionMaskInterface``) by :mod:`hallufix.intercept.registration`, set on the language model
only while a run is active.

Per layer and forward it does the least work the active methods declared:

* no hook at this layer (or no active run): transformers' own SDPA function, unchanged;
* ``kv``: methods edit the keys/values the kernel sees;
* ``bias``: rows that receive a bias are recomputed with SDPA and a float mask (``causal + bias``); all other rows
  keep the fused causal path. At prefill the biased rows are the instruction rows (tens of rows out of hundreds),
  so the bias costs a few percent instead of losing the causal fast path for the whole matrix;
* ``probs``: only the declared query rows are materialised: ``softmax(q_R K^T * scale + mask_R + bias_R)``,
  ``O(R * kv * D * H)``; when a method edits them, those rows' outputs become ``P @ V`` exactly;
* ``heads``: per-head outputs ``(B, q, H, D)`` scaled or replaced before ``o_proj``.

The function never keeps references to modules or tensors after it returns; per-run state lives on the active
:class:`~hallufix.intercept.install.Interceptor` found through a context variable.
"""
from __future__ import annotations

import contextvars

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from hallufix.events import BiasEvent, HeadsEvent, KVEvent, ProbsEvent

#: The name under which the function and its mask function are registered (process-wide, once).
ATTN_NAME = "hallufix"

#: The interceptor of the run in progress (``None`` outside runs).
ACTIVE: contextvars.ContextVar = contextvars.ContextVar("hallufix_active_interceptor", default=None)


def hallufix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """``AttentionInterface`` signature: ``query (B, H, q, D)``, ``key/value (B, Hkv, kv, D)``, mask ``None``
    (no padding), bool ``(B, 1, q, kv)`` or additive float. Returns ``(output (B, q, H, D), None)``."""
    st = ACTIVE.get()
    plan = st.plans[st.forward.phase].get(id(module)) if st is not None else None
    if plan is None:
        if st is not None:
            st.count_path(getattr(module, "layer_idx", -1), "sdpa")
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if ("attn_transform", st.forward.phase) in plan.callers:  # score transforms: their own kernel (transform.py)
        from hallufix.intercept.transform import run_transform_layer
        return run_transform_layer(st, plan, module, query, key, value, attention_mask, scaling, dropout, kwargs)
    return run_layer(st, plan, module, query, key, value, attention_mask, scaling, dropout, kwargs)


def row_mask(attention_mask, rows: torch.Tensor, q_len: int, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive float mask ``(B|1, 1, R, kv)`` for query ``rows`` (indices into ``q``), from whatever mask SDPA
    received: ``None`` means causal with the queries at the end of the cache."""
    neg = torch.finfo(dtype).min
    if attention_mask is None and q_len == 1:  # one row at the end of the cache: every key is visible
        return torch.zeros((1, 1, len(rows), kv_len), dtype=dtype, device=rows.device)
    if attention_mask is None:
        qpos = kv_len - q_len + rows
        allowed = torch.arange(kv_len, device=rows.device)[None, :] <= qpos[:, None]
        return torch.where(allowed, 0.0, neg).to(dtype)[None, None]
    sub = attention_mask[:, :, rows, :kv_len]
    if sub.dtype == torch.bool:
        return torch.where(sub, 0.0, neg).to(dtype)
    return sub.to(dtype)


def run_layer(st, plan, module, query, key, value, attention_mask, scaling, dropout, kwargs):
    """One declared layer (see the module docstring for the paths)."""
    fwd = st.forward
    phase, layer = fwd.phase, plan.layer
    q_len, kv_len = query.shape[2], key.shape[2]
    ev_kw = dict(layer=layer, forward=fwd, layout=st.layout, model=st.info, dtype=query.dtype)
    scaling = module.scaling if scaling is None else scaling
    heads_caller = plan.callers.get(("attn_heads", phase))
    if plan.heads_only.get(phase, False):
        # heads-only layer in this phase: the fused kernel, then the per-head edit
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                        **kwargs)
        st.count_path(layer, "sdpa")
        return _heads(st, plan, module, heads_caller, out, ev_kw), None

    kv_caller = plan.callers.get(("attn_kv", phase))
    if kv_caller is not None:
        ev = KVEvent(key, value, **ev_kw)
        kv_caller(event=ev)
        key, value = ev.key, ev.value
        st.fired(plan.names["attn_kv"])

    terms = []
    bias_caller = plan.callers.get(("attn_bias", phase))
    if bias_caller is not None:
        def collect():
            ev = BiasEvent(**ev_kw)
            bias_caller(event=ev)
            return ev.terms

        shared = plan.bias_shared.get(phase)
        # per_forward biases: one call per forward, its terms reused by the layers with the same methods
        terms = collect() if shared is None else fwd.shared(shared, collect)
        st.fired(plan.names["attn_bias"])

    n_rep = module.num_key_value_groups

    # a decode step has one query row, the new token: it is the last row, a text row, and every row
    single = phase == "decode" and q_len == 1
    row0 = fwd.shared(("row0", query.device), lambda: torch.zeros(1, dtype=torch.long, device=query.device)) \
        if single else None

    def bias_rows(rows_idx, rows_key):
        """Float mask ``(B|1, 1, R, kv)`` of the rows ``rows_idx``: causal/padding plus this layer's bias terms.
        Layers of one forward usually share both (the mask object, one bias tensor per method), so the sum is built
        once per forward and reused; the memo holds the terms, so their ids cannot be reused within the forward.

        A term applies only to its rows (``torch.where`` on the row selection, never ``sel * bias``: ``0 * -inf``
        is NaN, and a NaN in a padding row's output reaches every row through the values), and the sum is clamped
        at the dtype's finite minimum, so ``-inf`` biases mask keys without ever giving a row of ``-inf``."""
        key = ("row_mask", id(attention_mask), kv_len, query.dtype, rows_key)
        mask = fwd.shared(key, lambda: row_mask(attention_mask, rows_idx, q_len, kv_len, query.dtype))
        if not terms:
            return mask

        def biased():
            m = mask
            for col_bias, rows in terms:
                sel = rows[:, rows_idx][:, None, :, None]  # (B, 1, R, 1) bool
                m = torch.where(sel, m + col_bias[:, :, None, :].to(query.dtype), m)
            return list(terms), m.clamp(min=torch.finfo(query.dtype).min)

        return fwd.shared(key + (tuple((id(b), id(r)) for b, r in terms),), biased)[1]

    probs_ev = None
    kinds = plan.probe_rows.get(phase)
    if kinds:
        if single:
            rows_p, rows_key = row0, "row0"
        elif kinds == {"last"}:
            rows_key = ("last", q_len)
            rows_p = fwd.shared(("rows",) + rows_key,
                                lambda: torch.full((1,), q_len - 1, dtype=torch.long, device=query.device))
        else:
            probe = torch.zeros(q_len, dtype=torch.bool, device=query.device)
            if "all" in kinds:
                probe[:] = True
            if "last" in kinds:
                probe[-1] = True
            if "text" in kinds:
                probe |= fwd.shared(("text_rows_any", id(st.layout)),
                                    lambda: st.layout.text_rows(fwd.positions_on(query.device)).any(0))
            rows_p = probe.nonzero().squeeze(1)
            rows_key = tuple(rows_p.tolist())
        if rows_p.numel():
            q_rows = query if single else query[:, :, rows_p]
            scores = torch.matmul(q_rows, repeat_kv(key, n_rep).transpose(-1, -2)) * scaling
            # probe rows are float32 whatever the model dtype (the statistics methods take from them)
            probs = torch.softmax((scores + bias_rows(rows_p, rows_key)).float(), dim=-1)
            probs_ev = ProbsEvent(probs, rows_p, **ev_kw)
            plan.callers[("attn_probs", phase)](event=probs_ev)
            st.fired(plan.names["attn_probs"])
            if probs_ev.edited and not st.table.editing_probes(layer):
                raise RuntimeError(f"layer {layer}: a method edited attention probabilities without declaring "
                                   f"attn_probs(..., edits=True)")

    edited = probs_ev is not None and probs_ev.edited
    if single and not edited:
        if terms:
            # the single row is biased: one SDPA call with the float mask, no row bookkeeping
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias_rows(row0, "row0"),
                                                 scale=scaling, enable_gqa=n_rep > 1).transpose(1, 2).contiguous()
            st.count_path(layer, "rows")
        else:
            # probes only read: the fused kernel as usual
            out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                            dropout=dropout, **kwargs)
            st.count_path(layer, "sdpa")
        return _heads(st, plan, module, heads_caller, out, ev_kw), None

    custom = torch.zeros(q_len, dtype=torch.bool, device=query.device)  # rows recomputed with a float mask
    for _, rows in terms:
        custom |= rows.any(0)
    if edited:
        custom[probs_ev.rows] = True

    out = None
    if not bool(custom.all()):
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                        **kwargs)
        st.count_path(layer, "sdpa+rows" if bool(custom.any()) else "sdpa")
    else:
        st.count_path(layer, "rows")
    if bool(custom.any()):
        rows_c = custom.nonzero().squeeze(1)
        # grouped-query heads are expanded inside the kernel (enable_gqa), not copied with repeat_kv
        out_c = F.scaled_dot_product_attention(query[:, :, rows_c], key, value,
                                               attn_mask=bias_rows(rows_c, tuple(rows_c.tolist())),
                                               scale=scaling, enable_gqa=n_rep > 1)
        if probs_ev is not None and probs_ev.edited:
            # rows whose probabilities a method replaced: exactly P @ V
            v_rep = repeat_kv(value, n_rep)
            pos = torch.full((q_len,), -1, dtype=torch.long, device=query.device)
            pos[rows_c] = torch.arange(rows_c.numel(), device=query.device)
            out_c[:, :, pos[probs_ev.rows]] = torch.matmul(probs_ev.probs.to(v_rep.dtype), v_rep)
        out_c = out_c.transpose(1, 2)  # (B, R, H, D)
        if out is None:
            out = out_c.contiguous()
        else:
            out = out.clone()
            out[:, rows_c] = out_c

    return _heads(st, plan, module, heads_caller, out, ev_kw), None


def _heads(st, plan, module, heads_caller, out, ev_kw):
    """Per-head outputs ``(B, q, H, D)`` through the layer's ``heads`` hook, if it has one. A prefill hook that
    finished the layer (fold / done) releases its decode steps (:meth:`Interceptor.release_finished`)."""
    if heads_caller is None:
        return out
    layer = plan.layer
    ev = HeadsEvent(out, fold=lambda g: st.fold_head_gains(layer, g), done=lambda: st.finish_layer(layer), **ev_kw)
    heads_caller(event=ev)
    st.fired(plan.names["attn_heads"])
    if layer in st.finished_layers and st.forward.phase == "prefill":
        st.release_finished(layer, module)
    return ev.output

