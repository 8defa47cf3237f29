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
        (0 at prefill, then 1, 2, ...), ``q_len``, ``kv_offset``, ``lookahead`` (``k`` in a batched beam
        look-ahead forward of ``k`` candidate rows that all sit at position ``kv_offset``, else 0).
    """


# --------------------------------------------------------------------------------------------- per layer


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
        candidate token per beam (every declared hook fires; the cache is restored),
        ``event.lookahead_many(tokens (N, k))`` the ``k`` candidates of every beam in one forward (``k`` query rows
        at the same position, each seeing the beam's cache and itself: a 4D mask; ``event.can_lookahead_many`` is
        false for attention kernels without one) and ``event.rollback(n, ban)`` restarts the search from the beams
        of ``n`` generated tokens. Implementing this hook switches beam search to
        :func:`hallufix.decoding.beam.candidate_beam_search` (transformers' loop step for step, plus this hook).
    Phase: once per beam step, after the decode forward. Look-ahead forwards are ``decode`` forwards to every other
    hook: a one-candidate look-ahead is an ordinary decode step (``q_len = 1``); a batched one has ``q_len = k`` and
    ``forward.lookahead = k`` (see :class:`hallufix.events.ForwardInfo`).
    """


@hookspec
def hallufix_beam_reorder(parents):
    """The running beams were reordered (``--decoding beam`` only): new row ``i`` continues old row ``parents[i]``.

    :param parents: ``(B * num_beams,)`` long on the model's device; a prompt's beams stay in its group of
        ``num_beams`` consecutive rows. A method that carries per-row state from one decode forward to the next
        (running sums over the generated rows, per-row counters) permutes it as ``state[parents]``, so each beam
        keeps its own hypothesis' state. Implementing this hook switches beam search to
        :func:`hallufix.decoding.beam.candidate_beam_search` (transformers' loop step for step).
    Phase: once per beam step, after the selection and the cache reorder, before the next decode forward. A
    rollback (``CandidateEvent.rollback``) restores the beams of an earlier step and is not a reorder: state kept
    across it is the method's own concern.
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


# the per-layer hooks (decoder layers, the Q-Former, the MLP, the logit lens) live beside this module
from hallufix.hookspecs_layer import (hallufix_attn_bias, hallufix_attn_heads, hallufix_attn_kv,  # noqa: E402,F401
                                     hallufix_attn_probs, hallufix_attn_transform, hallufix_layer_input,
                                     hallufix_logit_lens, hallufix_mlp_in, hallufix_mlp_out, hallufix_qformer_bias)
