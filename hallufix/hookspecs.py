"""Every hallufix hookspec, grouped by phase.

Lifecycle of one run (``hallufix run`` or :meth:`hallufix.api.Session.generate`)::

    discovery      hallufix_register_methods            (every installed plugin, once per process)
                   hallufix_register_analyses           (the same; analyses for `hallufix inspect` / `analyze`)
    run setup      hallufix_configure                   (each active method: declare hook points)
                   hallufix_declare_branches            (each active method: extra forwards per step)
    per batch      hallufix_batch_start                 (reset per-batch state; before the images)
                   hallufix_input_image                 point input_image (chained; may run an analysis prefill)
      prefill        hallufix_qformer_bias              point qformer_bias.{i} (Q-Former models: a Q-Former layer)
      per forward    hallufix_forward_start             (prefill, then each decode step)
        per layer      hallufix_layer_input             point layer_input.{i}
                       hallufix_attn_kv                 point attn_kv.{i}
                       hallufix_attn_bias               point attn_bias.{i}
                       hallufix_attn_transform          point attn_transform.{i}
                       hallufix_attn_probs              point attn_probs.{i}
                       hallufix_attn_heads              point attn_heads.{i}
                       hallufix_logit_lens              point logit_lens.{i}
                       hallufix_mlp_in                  point mlp_in.{i}
                       hallufix_mlp_out                 point mlp_out.{i}
      per step       hallufix_logits                    point logits
                   hallufix_batch_end                   (returns the method's diagnostics, one per batch row)

A hook point is named after the hook that receives it (:mod:`hallufix.points`): ``attn_bias.3`` is
``hallufix_attn_bias`` at decoder layer 3 (0-based).

Calling rules, the same for every hook:

* A method's hooks are called **only for the points it declared** in :func:`hallufix_configure` (layer and
  phase); other layers never see a Python call and keep the fused SDPA kernel.
* Methods are called in the order the user typed them (``--plugins clva,ara`` -> clva first).
* Edits chain through the event object: each hook receives the event holding the current value (after the
  previous methods' edits) and edits it with the event's methods. Return values are ignored (``None``), except
  ``hallufix_configure``'s (the declared points) and ``hallufix_batch_end``'s (the diagnostics).
* Stacking algebra: biases add, probability / hidden / key-value / logit / image edits chain in typed order,
  head gains multiply.

Shapes use ``B`` batch rows, ``H`` query heads, ``Hkv`` key/value heads, ``q`` query rows in this forward
(prompt length at prefill, 1 at decode), ``kv`` key positions (cache length), ``D`` head dim, ``d`` hidden size,
``V`` vocabulary, ``n_max`` the most visual tokens of any row. Event classes live in :mod:`hallufix.events`.

Visual tokens of a batch: ``event.visual`` / ``batch.visual`` / ``capture.visual`` is the batch's
:class:`hallufix.visual.VisualTokens`, built once per batch: ``index`` / ``valid`` ``(B, n_max)``, ``counts``
``(B,)``, per row and image the token ``grids`` and slot ``ranges``. Rows may hold different numbers of visual
tokens (Qwen gives every image its own grid; a method may add a second image), so per-token values are
``(B, ..., n_max)`` with padded slots 0; the :mod:`hallufix.capture` utilities take the description and compute
every per-row statistic (mean, std, quantile, z-score, top-k, entropy, maps, Hellinger / JS) over each row's own
tokens, and scatter back exactly. Never assume one count per batch.

Devices and dtypes, the same for every hook:

* Event tensors live on the model's device (``event.device``); so do :class:`~hallufix.capture.PrefillCapture`
  results.
* What a hook hands back (a bias to ``BiasEvent.add``, ``key`` / ``value``, ``hidden``, ``probs``, gains to
  ``HeadsEvent.scale``, head ``output``, ``scores``) is checked for shape and moved to the model's device and the
  slot's dtype by the event. Build tensors on ``event.device`` all the same (a host-built tensor costs a copy per
  call, and mixing it with event tensors inside the hook fails on a GPU).
* Analysis that needs host memory (NumPy, PIL) copies explicitly: ``tensor.cpu().numpy()``, once per batch
  where it can, never ``.numpy()`` of an event tensor.
* Probe rows (``ProbsEvent.probs``) and capture results are float32 whatever the model dtype; compute
  statistics in float32.
* Masks use the dtype's finite minimum; a ``-inf`` bias masks a key, and the core clamps the summed float mask at
  the finite minimum, so rows never see ``-inf`` everywhere (no NaN, also in padding rows).
* Tests check this on CPU with strict device mode (:mod:`hallufix.intercept.strict`, ``HALLUFIX_STRICT_DEVICES=1``):
  ``.numpy()`` of a model-device tensor, or mixing host-built and device tensors, raises inside hooks.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("hallufix")

# --------------------------------------------------------------------------------------------- discovery


@hookspec
def hallufix_register_methods(register):
    """Name the methods this distribution provides (called once per process for every installed plugin).

    :param register: ``register(name, target, *, description="")`` where ``target`` is a lazy
        ``"module:Class"`` string (so discovery imports no torch). The class is instantiated only when a run
        activates it.
    """


@hookspec
def hallufix_register_analyses(register):
    """Name the analyses this distribution provides (called once per process for every installed plugin).

    :param register: ``register(name, target, *, kind="inspect", description="")`` where ``target`` is a lazy
        ``"module:function"`` string. ``kind="inspect"``: ``function(inspection)`` receives a
        :class:`hallufix.analysis.Inspection` (the per-layer captures with the stack off and on, the output
        folder), writes its files and returns the Markdown lines of its section of ``index.md``; ``hallufix
        inspect`` runs every registered one. ``kind="task"``: ``function(session, task_spec, out, **options)``
        returns a JSON-serialisable dict; ``hallufix analyze NAME`` runs it.
    """


# --------------------------------------------------------------------------------------------- run setup


@hookspec
def hallufix_configure(model):
    """Declare the hook points this method needs on the loaded model.

    :param model: :class:`hallufix.layout.ModelInfo` (family, number of layers, heads, KV heads, head dim,
        image-token id, and ``capabilities``: ``spatial_grid``, ``multi_image``, ``token_to_patch``; test these,
        never the family name, to refuse a setting a model cannot support).
    :return: a list of :class:`hallufix.points.HookPoint` (build them with ``hallufix.points.attn_bias(...)``
        etc.). Returning ``[]`` means the method is a no-op for this configuration (e.g. strength 0): nothing is
        installed and none of its point hooks is called (the per-batch and per-forward hooks, batch_start,
        forward_start, batch_end, still are: return ``None`` from batch_end then).
    """


@hookspec
def hallufix_declare_branches(model):
    """Declare the extra forwards (branches) this method needs at every generation step.

    :param model: :class:`hallufix.layout.ModelInfo`.
    :return: a list of :class:`hallufix.branches.Branch` (``[]`` or ``None``: no branch). Branch rows run as extra
        batch rows in lockstep with the main rows (see :mod:`hallufix.branches`); their next-token scores reach
        ``hallufix_logits`` as ``event.branches[name]`` ``(B, V)``
        (:class:`hallufix.intercept.branch.BranchLogitsEvent`).
    Phase: run setup, after ``hallufix_configure``.
    """


# --------------------------------------------------------------------------------------------- per batch


@hookspec
def hallufix_batch_start(batch):
    """A batch is about to be generated: reset per-batch state here. Runs first in a batch, before
    :func:`hallufix_input_image`, so state the image hook builds survives into the generation.

    :param batch: :class:`hallufix.events.BatchInfo`: ``model``, ``questions``, ``batch_size``; ``layout`` is
        ``None`` here (the images may still change) and set before the first forward.
    """


@hookspec
def hallufix_input_image(event):
    """Edit the input images before the processor (point ``input_image``).

    :param event: :class:`hallufix.events.ImageEvent`: ``images`` (list of RGB ``PIL.Image``, one per batch
        row, replace entries to edit; chained in typed order), ``questions``, ``extra_images`` (append an image
        per row to feed a second image), and ``capture(...)`` to run an analysis prefill on the *current* images
        with probes (fresh cache, no generation; hook points of other methods are not active during it).
    Phase: before prefill, once per batch.
    """


@hookspec
def hallufix_forward_start(forward):
    """A forward pass of the language model begins.

    :param forward: :class:`hallufix.events.ForwardInfo`: ``phase`` (``"prefill"``/``"decode"``), ``step``
        (0 at prefill, then 1, 2, ...), ``q_len``, ``kv_offset``.
    """


# --------------------------------------------------------------------------------------------- per layer


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
        its attention over each row's visual tokens. Editing: assign ``event.probs = new``; the core then
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
    Phase: as declared; called once per declared layer per forward, in layer order.
    """


# --------------------------------------------------------------------------------------------- per step


@hookspec
def hallufix_logits(event):
    """Next-token scores (point ``logits``), once per generation step.

    :param event: :class:`hallufix.events.LogitsEvent`: ``scores`` ``(B, V)`` (replace to edit; chained),
        ``input_ids`` ``(B, cur_len)``.
    """


@hookspec
def hallufix_beam_candidates(event):
    """One beam-search step's next-token logits, before ``log_softmax`` (``--decoding beam`` only).

    :param event: :class:`hallufix.decoding.candidates.CandidateEvent`: ``logits`` ``(B * num_beams, V)`` float32
        (replace to edit; chained in typed order), ``input_ids`` of the running beams, ``step``, ``parents`` (the
        row each beam continued), ``banned`` after a rollback; ``event.lookahead(tokens)`` runs one forward on a
        candidate token per beam (every declared hook fires; the cache is restored) and ``event.rollback(n, ban)``
        restarts the search from the beams of ``n`` generated tokens. Implementing this hook switches beam search to
        :func:`hallufix.decoding.beam.candidate_beam_search` (transformers' loop step for step, plus this hook).
    Phase: once per beam step, after the decode forward.
    """


# --------------------------------------------------------------------------------------------- results


@hookspec
def hallufix_batch_end(batch):
    """A batch finished generating: return this method's diagnostics.

    :param batch: :class:`hallufix.events.BatchInfo` (``layout``, ``visual``, ``questions``, ``batch_size``).
    :return: a list with one JSON-serialisable entry per batch row (``None`` for a row with nothing to say), or
        ``None``. The core files entry ``r`` as ``diagnostics[r][<method name>]``: the method never names itself.
        (Writing ``batch.diagnostics[row][name]`` directly still works.)
    """
