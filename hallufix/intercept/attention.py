"""The hallufix attention function: registered once with transformers' ``AttentionInterface`` (and its mask
function with ``AttentionMaskInterface``), set on the language model only while a run is active.

Per layer and forward it does the least work the active methods declared:

* no hook at this layer (or no active run): transformers' own SDPA function, unchanged (but for a batched beam
  look-ahead on a CPU, :func:`fused_sdpa`);
* ``kv``: methods edit the keys/values the kernel sees;
* ``bias``: rows that receive a bias are recomputed with SDPA and a float mask (``causal + bias``); all other rows
  keep the fused causal path. At prefill the biased rows are the instruction rows (tens of rows out of hundreds),
  so the bias costs a few percent instead of losing the causal fast path for the whole matrix;
* ``probs``: only the declared query rows are materialised: ``softmax(q_R K^T * scale + mask_R + bias_R)``,
  ``O(R * kv * D * H)``; when a method edits them, those rows' outputs become ``P @ V`` exactly;
* ``heads``: per-head outputs ``(B, q, H, D)`` scaled or replaced before ``o_proj``; static gains applied, folded
  or released by the core (:mod:`hallufix.intercept.heads`).

:func:`run_layer` is the dispatcher: it reads the layer's :class:`~hallufix.intercept.dispatch.PhaseWork` and
calls the pure tensor kernels of :mod:`hallufix.intercept.kernels`. Work shared by the layers of one forward (row
masks, summed bias masks, probe rows, ``per_forward`` bias terms) sits in the forward's memo under typed keys
(:mod:`hallufix.forward`). The function never keeps references to modules or tensors after it returns; per-run
state lives on the active :class:`~hallufix.intercept.install.Interceptor` found through a context variable.
"""
from __future__ import annotations

import contextvars
from typing import NamedTuple

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hallufix.attn_events import ProbsEvent
from hallufix.events import BiasEvent, KVEvent
from hallufix.forward import BiasedMaskKey, MaskKey, Ref, RoleKey, RowsKey
from hallufix.intercept import kernels as K
from hallufix.intercept.heads import apply_heads, apply_stored_gains

#: The name under which the function and its mask function are registered (process-wide, once).
ATTN_NAME = "hallufix"

#: The interceptor of the run in progress (``None`` outside runs).
ACTIVE: contextvars.ContextVar = contextvars.ContextVar("hallufix_active_interceptor", default=None)


def fused_sdpa(st, module, query, key, value, attention_mask, scaling, dropout, kwargs) -> torch.Tensor:
    """transformers' SDPA attention function (``sdpa_attention_forward``) -> output ``(B, q, H, D)``, except in a
    batched beam look-ahead forward (``st.forward.lookahead > 1``) on a CPU with grouped-query heads (where this
    function runs the layers: some method declared an attention point, as OPERA does).

    There the ``k`` candidate rows come with a 4D float mask, and transformers then repeats every key/value head
    per query head (``repeat_kv``: a copy of the whole cache at every layer and step) because masked grouped-query
    SDPA can fall back to the slow math kernel on CUDA. torch's CPU kernel takes the mask with ``enable_gqa``
    (query head ``h`` reads key/value head ``h // n_rep``, the layout ``repeat_kv`` builds): the same products
    without the copy (bitwise equal on the CPU measured; tests/test_lookahead_gqa.py checks 1e-6). Accelerators keep
    transformers' path."""
    fwd = st.forward if st is not None else None
    if (fwd is not None and fwd.lookahead > 1 and query.device.type == "cpu" and attention_mask is not None
            and attention_mask.dim() == 4 and getattr(module, "num_key_value_groups", 1) > 1
            and kwargs.get("softcap") is None and kwargs.get("position_bias") is None
            and not kwargs.get("output_attentions")):
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                               dropout_p=dropout, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous()
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                  **kwargs)[0]


class RowIndexKey(NamedTuple):
    """The ``(R,)`` index tensor of the rows ``rows`` on ``device`` (memo key)."""

    rows: RowsKey
    device: torch.device


class ProbeRowsKey(NamedTuple):
    """The probe rows of row ``kinds`` in this forward on ``device`` (memo key)."""

    kinds: frozenset
    device: torch.device


def hallufix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """``AttentionInterface`` signature: ``query (B, H, q, D)``, ``key/value (B, Hkv, kv, D)``, mask ``None``
    (no padding), bool ``(B, 1, q, kv)`` or additive float. Returns ``(output (B, q, H, D), None)``."""
    st = ACTIVE.get()
    plan = st.plans[st.forward.phase].get(id(module)) if st is not None else None
    if plan is None:
        if st is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                          dropout=dropout, **kwargs)
        st.count_path(getattr(module, "layer_idx", -1), "sdpa")
        return fused_sdpa(st, module, query, key, value, attention_mask, scaling, dropout, kwargs), None
    if plan.work[st.forward.phase].transform is not None:  # score transforms: their own kernel (transform.py)
        from hallufix.intercept.transform import run_transform_layer
        return run_transform_layer(st, plan, module, query, key, value, attention_mask, scaling, dropout, kwargs)
    return run_layer(st, plan, module, query, key, value, attention_mask, scaling, dropout, kwargs)


def run_layer(st, plan, module, query, key, value, attention_mask, scaling, dropout, kwargs):
    """One declared layer in the current phase (the paths in the module docstring). ``query`` ``(B, H, q, D)``,
    ``key`` / ``value`` ``(B, Hkv, kv, D)``; returns ``(output (B, q, H, D), None)`` in the model dtype."""
    fwd, layer = st.forward, plan.layer
    work = plan.work[fwd.phase]
    scaling = module.scaling if scaling is None else scaling
    if work.gains_only:  # the most frequent declared call (static gains at every decode step): no event to build
        out = fused_sdpa(st, module, query, key, value, attention_mask, scaling, dropout, kwargs)
        st.count_path(layer, "sdpa")
        return apply_stored_gains(st, layer, out), None
    ev_kw = dict(layer=layer, forward=fwd, layout=st.layout, model=st.info, dtype=query.dtype)

    def fused():
        return fused_sdpa(st, module, query, key, value, attention_mask, scaling, dropout, kwargs)

    def fused_prefix(r0: int):  # the first r0 rows of a prefill without cache see only the first r0 keys
        mask = None if attention_mask is None else attention_mask[..., :r0, :r0]
        return sdpa_attention_forward(module, query[:, :, :r0], key[:, :, :r0], value[:, :, :r0], mask,
                                      scaling=scaling, dropout=dropout, **kwargs)[0]

    prefix = fused_prefix if fwd.kv_offset == 0 and key.shape[2] == query.shape[2] and \
        (attention_mask is None or attention_mask.dim() == 4) else None

    if work.heads_only:
        st.count_path(layer, "sdpa")
        return apply_heads(st, plan, module, work, fused(), ev_kw), None
    if work.kv is not None:
        ev = KVEvent(key, value, **ev_kw)
        work.kv(event=ev)
        key, value = ev.key, ev.value
        st.fired(plan.names["attn_kv"])
    terms = _bias_terms(st, plan, work, ev_kw) if work.bias else []
    masks = _Masks(fwd, attention_mask, query, key.shape[2], terms)
    probed = _probe(st, plan, work, query, key, scaling, masks, ev_kw) if work.probe_rows else None
    edited = probed is not None and probed.edited
    if masks.single and not edited:
        if terms:  # the single row is biased: one SDPA call with the float mask, no row bookkeeping
            out = K.rows_attention(query, key, value, masks.get(masks.one, ONE), scaling).transpose(1, 2)
            out, path = out.contiguous(), "rows"
        else:  # probes only read: the fused kernel as usual
            out, path = fused(), "sdpa"
    else:
        custom = torch.zeros(query.shape[2], dtype=torch.bool, device=query.device)  # rows with a float mask
        for _, rows in terms:
            custom |= rows.any(0)
        if edited:
            custom[probed.rows] = True
        out, path = _attend_rows(custom, fused, query, key, value, scaling, masks, probed if edited else None,
                                 prefix)
    st.count_path(layer, path)
    return apply_heads(st, plan, module, work, out, ev_kw), None


#: the rows key of a decode step's single query row
ONE = RowsKey("one", 1)


class _Masks:
    """Additive row masks of one layer call, memoised per forward (:class:`MaskKey` / :class:`BiasedMaskKey`):
    the mask SDPA received restricted to some rows, plus this layer's bias ``terms``. Layers of one forward
    usually share both (the mask object; one bias tensor per method), so each sum is built once per forward."""

    def __init__(self, fwd, attention_mask, query, kv_len: int, terms):
        self.fwd, self.attention_mask, self.terms = fwd, attention_mask, terms
        self.q_len, self.kv_len, self.dtype, self.device = query.shape[2], kv_len, query.dtype, query.device
        #: a decode step: one query row, the new token (the last row, a text row, every row)
        self.single = fwd.phase == "decode" and self.q_len == 1

    @property
    def one(self) -> torch.Tensor:
        """``(1,)`` long: the index of a decode step's single row (memoised per forward)."""
        return self.fwd.shared(RowIndexKey(ONE, self.device), lambda: torch.zeros(1, dtype=torch.long,
                                                                                    device=self.device))

    def get(self, rows: torch.Tensor, rows_key: RowsKey) -> torch.Tensor | None:
        """``(B|1, 1|H, R, kv)`` in the model dtype for ``rows`` ``(R,)`` (described by ``rows_key``); ``None``
        when nothing is masked (a decode step's row without padding or bias: every key is visible)."""
        if self.single and self.attention_mask is None and not self.terms:
            return None
        mkey = MaskKey(Ref(self.attention_mask), self.kv_len, self.dtype, rows_key)

        def plain():
            return self.fwd.shared(mkey, lambda: K.row_mask(self.attention_mask, rows, self.q_len, self.kv_len,
                                                            self.dtype))

        if not self.terms:
            return plain()
        bkey = BiasedMaskKey(mkey, tuple((Ref(b), Ref(r)) for b, r in self.terms))
        return self.fwd.shared(bkey, lambda: K.add_bias_terms(plain(), self.terms, rows))


def _bias_terms(st, plan, work, ev_kw) -> list:
    """This layer's bias terms ``[(bias (B, 1|H, kv), rows (B, q) bool), ...]`` in typed order; a ``per_forward``
    method's terms come from its per-forward cache entry (one call per forward, whatever else biases the layer)."""
    def collect(caller):
        ev = BiasEvent(**ev_kw)
        caller(event=ev)
        return ev.terms

    terms = []
    for slot in work.bias:
        if slot.per_forward:
            terms += st.forward.cache(slot.owner, "hallufix.bias_terms", lambda: collect(slot.caller))
        else:
            terms += collect(slot.caller)
    st.fired(plan.names["attn_bias"])
    return terms


def _probe_rows(st, kinds, masks) -> tuple[torch.Tensor, RowsKey]:
    """``(rows (R,) long, key)``: the query rows a probe of ``kinds`` materialises in this forward (memoised)."""
    if masks.single:
        return masks.one, ONE
    q_len, device, layout = masks.q_len, masks.device, st.layout

    n_last = st.forward.last_rows  # k in a beam look-ahead forward (every candidate row is a last row), else 1

    def make():
        if kinds == {"last"} and n_last == 1:
            return torch.full((1,), q_len - 1, dtype=torch.long, device=device), RowsKey("last", q_len)
        text_any = st.forward.shared(RoleKey("text_rows_any", Ref(layout), device), lambda: layout.text_rows(
            st.forward.positions_on(device)).any(0)) if "text" in kinds else None
        rows = K.probe_row_index(kinds, q_len, text_any, device, last_rows=n_last)
        return rows, RowsKey("set", q_len, tuple(rows.tolist()))

    return st.forward.shared(ProbeRowsKey(kinds, device), make)


def _probe(st, plan, work, query, key, scaling, masks, ev_kw):
    """The declared probe rows' probabilities through the layer's ``probs`` hooks -> the event (``None`` when no
    row is probed in this forward)."""
    rows, rows_key = _probe_rows(st, work.probe_rows, masks)
    if not rows.numel():
        return None
    q_rows = query if masks.single else query[:, :, rows]
    # rows are increasing, so where the last row is probed it is the final one (no search in ProbsEvent.last)
    last = len(rows) - 1 if masks.single or work.probe_rows & {"last", "all"} else None
    ev = ProbsEvent(K.probe_probs(q_rows, key, scaling, masks.get(rows, rows_key)), rows, last_index=last, **ev_kw)
    work.probs(event=ev)
    st.fired(plan.names["attn_probs"])
    if ev.edited and not st.table.editing_probes(plan.layer):
        raise RuntimeError(f"layer {plan.layer}: a method edited attention probabilities without declaring "
                           f"attn_probs(..., edits=True)")
    return ev


def _attend_rows(custom, fused, query, key, value, scaling, masks, edited, prefix=None) -> tuple[torch.Tensor, str]:
    """Output ``(B, q, H, D)`` and its path: the fused kernel for the rows not in ``custom`` ``(q,)`` bool, SDPA
    with a float mask for the ``custom`` rows, and exactly ``P @ V`` for the rows of ``edited`` (a probs event).

    ``prefix(r0)`` (a prefill without cache): the fused output of the first ``r0`` rows alone. Where the custom
    rows are the last rows (a prompt's instruction rows, after the image), the fused kernel then runs on the rows
    before them only, instead of on every row with the custom ones overwritten: the same attention (a causal row
    sees no later key), less work."""
    if not bool(custom.any()):
        return fused(), "sdpa"
    every = bool(custom.all())
    rows = custom.nonzero().squeeze(1)
    r0 = int(rows[0])
    tail = not every and prefix is not None and rows.numel() == masks.q_len - r0
    out = None if every or tail else fused()
    out_rows = K.rows_attention(query[:, :, rows], key, value, masks.get(rows, RowsKey("set", masks.q_len,
                                                                                    tuple(rows.tolist()))), scaling)
    if edited is not None:  # rows whose probabilities a method replaced: exactly P @ V
        pos = torch.full((masks.q_len,), -1, dtype=torch.long, device=query.device)
        pos[rows] = torch.arange(rows.numel(), device=query.device)
        out_rows[:, :, pos[edited.rows]] = K.probs_times_values(edited.probs, value)
    if tail:
        return torch.cat([prefix(r0), out_rows.transpose(1, 2)], dim=1), "sdpa+rows"
    return K.merge_rows(out, out_rows, rows), "rows" if every else "sdpa+rows"  # out: this call's own tensor

