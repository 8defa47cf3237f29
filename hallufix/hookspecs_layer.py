"""The per-layer hookspecs (one call per declared layer and forward): decoder-layer input, attention (keys and
values, additive bias, score transform, probabilities, per-head outputs), the Q-Former's cross-attention, the MLP and
the logit lens. :mod:`hallufix.hookspecs` re-exports them, so ``pm.add_hookspecs(hallufix.hookspecs)`` registers
every hook; the calling rules and the device/dtype contract in its docstring hold here too."""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("hallufix")


@hookspec
def hallufix_layer_input(event):
    """Decoder-layer input hidden states (point ``layer_input.{i}``).

    :param event: :class:`hallufix.events.HiddenEvent`: ``hidden`` ``(B, q, d)`` (replace to edit; chained),
        ``positions`` ``(q,)`` cache positions of the rows, token-role masks ``visual_rows`` / ``text_rows``
        ``(B, q)``.
    Phase: as declared. Visual rows exist only at prefill; edits there persist through the KV cache.
    """


@hookspec
def hallufix_attn_kv(event):
    """Keys and values as the attention kernel sees them (point ``attn_kv.{i}``).

    :param event: :class:`hallufix.events.KVEvent`: ``key`` / ``value`` ``(B, Hkv, kv, D)`` (after RoPE and the
        cache update; replace to edit, chained). The KV cache keeps the originals, so a persistent edit must be
        re-applied at every forward (declare both phases).
    """


@hookspec
def hallufix_attn_bias(event):
    """Add to the pre-softmax attention logits (point ``attn_bias.{i}``).

    :param event: :class:`hallufix.events.BiasEvent`. Call ``event.add(column_bias, rows=...)`` with a per-key
        bias ``(B, 1|H, kv)`` applied to the query rows selected by ``rows`` (a ``(B, q)`` bool mask; default the
        text rows). Biases of all methods add. Rows that receive no bias stay on the fused causal SDPA path;
        biased rows run SDPA with a float mask. ``-inf`` entries mask a key; the mask is clamped at the dtype's
        finite minimum, so a row whose every key is masked gets finite (uniform) weights, never NaN. Build a
        bias over visual tokens with ``capture.scatter_visual(values, event.visual, event.kv_len)``.
    Equivalence: adding ``log w_j`` equals multiplying post-softmax ``A[i, j]`` by ``w_j`` and renormalising.
    Declared with ``per_forward=True``, the hook runs once per forward (at the first of its layers) and its terms
    apply at every declared layer, also where other methods bias the same layer: for biases that depend on the
    forward only, not on the layer.
    """


@hookspec
def hallufix_qformer_bias(event):
    """Add to the pre-softmax logits of the Q-Former cross-attention (point ``qformer_bias.{i}``;
    models whose ``capabilities.qformer`` is set). Called once per generation, in the prefill, before the language
    model runs.

    :param event: :class:`hallufix.intercept.qformer.QFormerBiasEvent`. ``event.add(bias)`` adds a
        ``(B, 1|H, 1|Q, K)`` (or ``(B, K)``) bias over the ``K`` image features (CLS first, then the patches);
        ``event.add_patch_bias(bias)`` a ``(B, rows*cols)`` bias over the patches only. Biases of all methods add;
        ``-inf`` masks a feature. Adding ``log w_j`` equals multiplying the cross-attention ``A[q, j]`` by ``w_j``
        and renormalising over the features. A layer without any term keeps the Q-Former's own kernel.
    """


@hookspec
def hallufix_attn_transform(event):
    """Transform raw pre-softmax attention scores of declared rows (point ``attn_transform.{i}``).

    :param event: :class:`hallufix.intercept.transform.ScoresEvent`: ``scores`` ``(B, H, R, kv)`` float32 for the
        query rows ``rows`` ``(R,)`` (the union of the declared row kinds at this layer): ``q K^T * scale`` plus
        the causal / padding mask (at the dtype's finite minimum, as eager attention clamps it) plus this layer's
        biases. Assign ``event.scores = f(event.scores)`` (chained across methods); the core then computes those
        rows as ``softmax(scores) @ V`` exactly. Rows not declared keep the fused kernel. For transforms that are
        not an additive bias: PAI's ``s + alpha |s|`` on image columns, ClearSight's ``x 1.15`` on image keys.
    """


@hookspec
def hallufix_attn_probs(event):
    """Read (and, when declared with ``edits=True``, replace) post-softmax probabilities of declared rows (point
    ``attn_probs.{i}``).

    :param event: :class:`hallufix.events.ProbsEvent`: ``probs`` ``(B, H, R, kv)`` float32 for the query rows
        ``rows`` ``(R,)`` (indices into this forward's ``q`` rows; the union of every method's declared rows at
        this layer), already including this layer's biases. ``event.row_mask("last"|"text"|"all")`` marks the
        rows of one kind, ``event.last()`` ``(B, H, kv)`` is the last row, ``event.visual_last()`` ``(B, H, n_max)``
        its attention over each row's visual tokens. In a batched beam look-ahead forward (``forward.lookahead =
        k``) every candidate row is a "last" row: ``rows="last"`` probes all ``k``, and ``event.last_rows()``
        ``(B, H, k, kv_offset + 1)`` gives each candidate's row over the cache and its own key (``(B, H, 1, kv)``,
        the last row, elsewhere). Editing: assign ``event.probs = new``; the core then
        recomputes those rows' outputs as ``P @ V`` exactly and does **not** renormalise: rows should still sum to 1 unless the method means otherwise.
    Cost: ``O(R * kv * D * H)`` per layer; the rest of the layer stays fused.
    """


@hookspec
def hallufix_attn_heads(event):
    """Per-head attention outputs before ``o_proj`` (point ``attn_heads.{i}``).

    :param event: :class:`hallufix.events.HeadsEvent`: ``output`` ``(B, q, H, D)``; ``event.scale(gains)``
        multiplies head outputs by ``gains`` ``(H,)`` or ``(B, H)`` (gains of stacked methods multiply), or
        replace ``event.output``.
    Declared with ``static_gains=True`` (gains fixed at prefill for the generation), the hook runs at prefill
    only with a :class:`hallufix.events.StaticGainsEvent` (``scale`` only); the core applies the gains at every
    forward, folds them into ``o_proj`` with ``fold=True`` where one vector serves the batch, and releases the
    layer's decode steps when nothing else runs there. ``HeadsEvent.fold`` / ``done`` are deprecated aliases.
    """


@hookspec
def hallufix_mlp_in(event):
    """The decoder layer's MLP input (point ``mlp_in.{i}``): the hidden states after
    ``post_attention_layernorm``, before the FFN.

    :param event: :class:`hallufix.events_mlp.MLPEvent`: ``hidden`` ``(B, q, d)`` in the model dtype (replace to
        edit; chained), token-role masks, ``lens(j)`` (logit lens of an earlier declared layer, this forward).
    Phase: as declared. Installed as a forward pre-hook on the layer's MLP module only at declared layers.
    """


@hookspec
def hallufix_mlp_out(event):
    """The decoder layer's MLP output before the residual add (point ``mlp_out.{i}``).

    :param event: :class:`hallufix.events_mlp.MLPOutEvent`: ``output`` ``(B, q, d)`` (replace to edit; chained),
        ``input`` ``(B, q, d)`` the MLP's input (read-only), token-role masks, ``valid_rows`` ``(B, q)``.
    Phase: as declared (FFN edits such as MemVR's visual key-value memory, FADE, AIR).
    """


@hookspec
def hallufix_logit_lens(event):
    """The logit lens at point ``logit_lens.{i}``: the residual stream entering decoder layer ``i`` (``i = 0``: the
    input embeddings), at the last position of this forward, before layer ``i`` runs.

    :param event: :class:`hallufix.events_lens.LensEvent`: ``hidden`` ``(B, d)`` (model dtype, read-only),
        ``logits(norm=True)`` ``(B, V)`` float32 through the model's final norm and ``lm_head`` (computed on
        first call, cached per event; ``norm=False`` skips the norm, as DoLa's official code), and ``lens`` the
        projector (``lens(hidden (..., d), norm=...)`` -> ``(..., V)`` float32) to project several stashed layers
        in one matmul later (e.g. in ``hallufix_logits``). Nothing is projected unless a hook asks.
        ``prefetch(norm=...)``: a hook that reads the lens only after the forward asks here; the rows are then
        computed with the model's own ``lm_head`` call of this forward (one pass over the head's weight; the
        model's logits unchanged bit for bit) and ``logits(norm)`` returns them.
    Phase: as declared; called once per declared layer per forward, in layer order.
    """


# --------------------------------------------------------------------------------------------- per step
