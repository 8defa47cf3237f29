"""Every hallufix hookspec, grouped by phase.

Lifecycle of one run (``hallufix run`` or :meth:`hallufix.api.Session.generate`)::

    discovery      hallufix_register_methods            (every installed plugin, once per process)
    run setup      hallufix_configure                   (each active method: declare hook points)
    per batch      hallufix_input_image                 (chained; may run an analysis prefill)
                   hallufix_batch_start                 (token layout known)
      per forward    hallufix_forward_start             (prefill, then each decode step)
        per layer      hallufix_layer_input             lm.layers.{i}.in
                       hallufix_attn_kv                 lm.layers.{i}.attn.kv
                       hallufix_attn_bias               lm.layers.{i}.attn.scores
                       hallufix_attn_probs              lm.layers.{i}.attn.probs
                       hallufix_attn_heads              lm.layers.{i}.attn.heads
      per step       hallufix_logits                    lm.logits
                   hallufix_batch_end                   (diagnostics per batch row)

Calling rules, the same for every hook:

* A method's hooks are called **only for the points it declared** in :func:`hallufix_configure` (layer and
  phase); other layers never see a Python call and keep the fused SDPA kernel.
* Methods are called in the order the user typed them (``--plugins clva,ara`` -> clva first).
* Edits chain through the event object: each hook receives the event holding the current value (after the
  previous methods' edits) and edits it with the event's methods. Return values are ignored (``None``).
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


# --------------------------------------------------------------------------------------------- run setup


@hookspec
def hallufix_configure(model):
    """Declare the hook points this method needs on the loaded model.

    :param model: :class:`hallufix.layout.ModelInfo` (family, number of layers, heads, KV heads, head dim,
        image-token id, and ``capabilities``: ``spatial_grid``, ``multi_image``, ``token_to_patch``; test these,
        never the family name, to refuse a setting a model cannot support).
    :return: a list of :class:`hallufix.points.HookPoint` (build them with ``hallufix.points.attn_bias(...)``
        etc.). Returning ``[]`` means the method is a no-op for this configuration (e.g. strength 0), and it is
        then not called at all.
    """


# --------------------------------------------------------------------------------------------- per batch


@hookspec
def hallufix_input_image(event):
    """Edit the input images before the processor (``input.image``).

    :param event: :class:`hallufix.events.ImageEvent`: ``images`` (list of RGB ``PIL.Image``, one per batch
        row, replace entries to edit; chained in typed order), ``questions``, ``extra_images`` (append an image
        per row to feed a second image), and ``capture(...)`` to run an analysis prefill on the *current* images
        with probes (fresh cache, no generation; hook points of other methods are not active during it).
    Phase: before prefill, once per batch.
    """


@hookspec
def hallufix_batch_start(batch):
    """A batch is about to be generated.

    :param batch: :class:`hallufix.events.BatchInfo` with the :class:`hallufix.layout.TokenLayout` (spans per
        row, visual grid per image) and the run stash. Reset per-batch state here.
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
    """Decoder-layer input hidden states (``lm.layers.{i}.in``).

    :param event: :class:`hallufix.events.HiddenEvent`: ``hidden`` ``(B, q, d)`` (replace to edit; chained),
        ``positions`` ``(q,)`` cache positions of the rows, token-role masks ``visual_rows`` / ``text_rows``
        ``(B, q)``.
    Phase: as declared. Visual rows exist only at prefill; edits there persist through the KV cache.
    """


@hookspec
def hallufix_attn_kv(event):
    """Keys and values as the attention kernel sees them (``lm.layers.{i}.attn.kv``).

    :param event: :class:`hallufix.events.KVEvent`: ``key`` / ``value`` ``(B, Hkv, kv, D)`` (after RoPE and the
        cache update; replace to edit, chained). The KV cache keeps the originals, so a persistent edit must be
        re-applied at every forward (declare both phases).
    """


@hookspec
def hallufix_attn_bias(event):
    """Add to the pre-softmax attention logits (``lm.layers.{i}.attn.scores``).

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
def hallufix_attn_probs(event):
    """Read (and, when declared with ``edits=True``, replace) post-softmax probabilities of declared rows.

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
    """Per-head attention outputs before ``o_proj`` (``lm.layers.{i}.attn.heads``).

    :param event: :class:`hallufix.events.HeadsEvent`: ``output`` ``(B, q, H, D)``; ``event.scale(gains)``
        multiplies head outputs by ``gains`` ``(H,)`` or ``(B, H)`` (gains of stacked methods multiply), or
        replace ``event.output``.
    Declared with ``static_gains=True`` (gains fixed at prefill for the generation), the hook runs at prefill
    only with a :class:`hallufix.events.StaticGainsEvent` (``scale`` only); the core applies the gains at every
    forward, folds them into ``o_proj`` with ``fold=True`` where one vector serves the batch, and releases the
    layer's decode steps when nothing else runs there. ``HeadsEvent.fold`` / ``done`` are deprecated aliases.
    """


# --------------------------------------------------------------------------------------------- per step


@hookspec
def hallufix_logits(event):
    """Next-token scores (``lm.logits``), once per generation step.

    :param event: :class:`hallufix.events.LogitsEvent`: ``scores`` ``(B, V)`` (replace to edit; chained),
        ``input_ids`` ``(B, cur_len)``.
    """


# --------------------------------------------------------------------------------------------- results


@hookspec
def hallufix_batch_end(batch):
    """A batch finished generating: record diagnostics.

    :param batch: :class:`hallufix.events.BatchInfo`; put JSON-serialisable per-row diagnostics in
        ``batch.diagnostics[row][method_name]``.
    """
