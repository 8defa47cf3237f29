"""Beam search with a per-step candidate hook (``hallufix_beam_candidates``), as a ``custom_generate`` callable.

transformers' ``_beam_search`` gives a ``LogitsProcessor`` the log-probabilities of the running beams and nothing
else: a method cannot look ahead at a candidate token (run the model on it to see its attention) or roll the beams
back to an earlier step. :func:`candidate_beam_search` is that loop, step for step (it calls the model's own beam
helpers ``_get_top_k_continuations``, ``_get_running_beams_for_next_iteration``, ``_update_finished_beams``,
``_check_early_stop_heuristic``, ``_beam_search_has_unfinished_sequences``, ``_prefill``, ``_reorder_cache`` /
``cache.reorder_cache``), with these additions:

* after each forward, the raw next-token logits ``(B * num_beams, V)`` float32 go to the candidate hook as a
  :class:`~hallufix.decoding.candidates.CandidateEvent` before transformers' ``log_softmax`` and the processors
  (exactly where OPERA's official loop edits them); the event can replace them, run look-ahead forwards on
  candidate tokens (``event.lookahead(tokens)``: the cache is cropped back afterwards) and ask for a rollback;
* a rollback (``event.rollback(n, ban)``) restores the beams as they were when ``n`` tokens had been generated,
  rebuilds the cache (cropped to the prompt, then one forward over the restored beams' ``n`` tokens) and redoes that
  step with the tokens in ``ban`` (``(B * num_beams, m)`` ids per restored row, ``-1`` for none) excluded.
* a look-ahead the hook kept (``event.lookahead_many(tokens, keep=True)``) becomes the next step when every beam
  the selection continues continues with one of its looked-ahead candidates: that step runs no decoder forward
  (:mod:`hallufix.decoding.reuse`; the next event says ``reused``). Allowed (``reuse_ok``) only where no other
  method has decode-step hooks, which expect one decode forward per step.
* after every cache reorder, ``hallufix_beam_reorder(parents)`` tells methods with per-row decode state which
  old row each new row continues (a method implementing only that hook gets this loop with no candidate hook:
  transformers' beam search bit for bit, plus the calls).

With a hook that changes nothing the loop is transformers' beam search bit for bit (tests/test_opera.py).
"""
from __future__ import annotations

import torch
from torch import nn

from hallufix.decoding import reuse
from hallufix.decoding.candidates import CandidateEvent

CACHE_NAMES = ("cache", "past_key_values")
GROWING = ("attention_mask", "position_ids", "token_type_ids", "mm_token_type_ids")


def _cache_of(model_kwargs: dict):
    for key in CACHE_NAMES:
        if model_kwargs.get(key) is not None:
            return key, model_kwargs[key]
    raise ValueError("candidate beam search needs the KV cache (use_cache=True)")


def crop_to(cache, length: int) -> None:
    """Cut ``cache`` back to ``length`` positions (transformers' ``crop`` takes the number to remove, negated)."""
    extra = int(cache.get_seq_length()) - int(length)
    if extra > 0:
        cache.crop(-extra)


def make_beam_search(hook, max_rollbacks: int = 1000, reuse_ok: bool = False, reorder=None):
    """A ``custom_generate`` callable running :func:`candidate_beam_search` with ``hook(event)`` (the run's
    ``hallufix_beam_candidates`` caller, or ``None``) at every step and ``reorder(parents=...)`` (the
    ``hallufix_beam_reorder`` caller, or ``None``) after every cache reorder; ``reuse_ok``: kept look-aheads may
    stand in for decode steps (no other method has decode-step hooks)."""

    def custom_generate(model, input_ids, logits_processor, stopping_criteria, generation_config,
                        synced_gpus=False, **model_kwargs):
        return candidate_beam_search(model, input_ids, logits_processor, stopping_criteria, generation_config,
                                     hook=hook, max_rollbacks=max_rollbacks, reuse_ok=reuse_ok, reorder=reorder,
                                     **model_kwargs)

    return custom_generate


def candidate_beam_search(model, input_ids, logits_processor, stopping_criteria, generation_config, *, hook,
                          max_rollbacks: int = 1000, reuse_ok: bool = False, reorder=None, **model_kwargs):
    """transformers' ``_beam_search`` (decoder-only, no streamer, no synced GPUs) with the candidate hook and
    rollback. ``input_ids`` ``(B * num_beams, P)`` (already expanded by ``generate``). Returns a
    ``GenerateBeamDecoderOnlyOutput`` (``return_dict_in_generate``) or the sequences."""
    from transformers.generation.utils import GenerateBeamDecoderOnlyOutput
    from transformers.modeling_outputs import CausalLMOutputWithPast

    if model.config.is_encoder_decoder:
        raise ValueError("candidate beam search supports decoder-only language models")
    gc = generation_config
    eos_token_id = gc._eos_token_tensor
    num_beams, max_length = gc.num_beams, gc.max_length
    output_logits, output_scores = gc.output_logits, gc.output_scores
    flat_b, cur_len = input_ids.shape[:2]
    batch_size = flat_b // num_beams
    prompt_len = cur_len
    n_eos = eos_token_id.shape[0] if eos_token_id is not None else 0
    beams_to_keep = max(2, 1 + n_eos) * num_beams
    top_num_beam_mask = torch.cat((torch.ones(num_beams, dtype=torch.bool),
                                   torch.zeros(beams_to_keep - num_beams, dtype=torch.bool))).to(input_ids.device)
    raw_logits, all_scores = ([], []) if gc.return_dict_in_generate else (None, None)
    fill = gc._pad_token_tensor or eos_token_id[0] if eos_token_id is not None else -1
    dev = input_ids.device
    state = {
        "running_sequences": torch.full((batch_size, num_beams, max_length), fill_value=fill, dtype=torch.int64,
                                        device=dev),
        "running_beam_scores": torch.zeros((batch_size, num_beams), dtype=torch.float, device=dev),
        "beam_scores": torch.full((batch_size, num_beams), fill_value=-1e9, dtype=torch.float, device=dev),
        "is_sent_finished": torch.zeros((batch_size, num_beams), dtype=torch.bool, device=dev),
        "early": torch.ones((batch_size, 1), dtype=torch.bool, device=dev),
        "hits": torch.zeros((batch_size, num_beams), dtype=torch.bool, device=dev),
        "running_beam_indices": torch.full((batch_size, num_beams, max_length - cur_len), fill_value=-1,
                                           dtype=torch.int32, device=dev),
        "cur_len": cur_len, "n_logits": 0,
    }
    state["running_sequences"][:, :, :cur_len] = model._unflatten_beam_dim(input_ids, batch_size, num_beams)
    state["sequences"] = state["running_sequences"].clone()
    state["running_beam_scores"][:, 1:] = -1e9
    state["beam_indices"] = state["running_beam_indices"].clone()
    history: list[dict] = []  # state before each step's selection (index = tokens generated)
    parents = None
    ban = None
    rollbacks = 0
    pending = None  # (kept look-ahead, parents, slot per new row): the next step's forward, already run

    outputs = model._prefill(input_ids, gc, model_kwargs, is_first_iteration=not gc.is_assistant)
    prefill_consumed = False
    finished = False
    while not finished:
        cur_len = state["cur_len"]
        flat_running = model._flatten_beam_dim(state["running_sequences"][:, :, :cur_len])
        reused = prefill_consumed and pending is not None
        if reused:
            outputs = CausalLMOutputWithPast(logits=reuse.logits(model, *pending))
        elif prefill_consumed:
            inputs = model.prepare_inputs_for_generation(flat_running, next_sequence_length=1, **model_kwargs)
            outputs = model(**inputs, return_dict=True)
        prefill_consumed, pending = True, None
        model_kwargs = model._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder=False)
        logits = outputs.logits[:, -1, :].to(copy=True, dtype=torch.float32, device=dev)
        del outputs

        step = cur_len - prompt_len
        history = history[:step]
        history.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()})
        event = CandidateEvent(model, model_kwargs, flat_running, logits, num_beams, step, parents, ban, prompt_len,
                               reuse_ok=reuse_ok, reused=reused)
        if hook is not None:
            hook(event=event)
        banned, ban = ban, None
        if event.rollback_to is not None and rollbacks < max_rollbacks and event.rollback_to < step:
            rollbacks += 1
            target, ban = event.rollback_to, event.rollback_ban
            state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in history[target].items()}
            _rebuild_cache(model, model_kwargs, state, prompt_len, batch_size, num_beams)
            outputs = _forward_response(model, model_kwargs, state, prompt_len)
            prefill_consumed = False
            parents = None
            if raw_logits is not None:
                del raw_logits[target:], all_scores[target:]
            continue
        logits = event.logits
        if banned is not None:  # (N, m) token ids per row, -1 = none
            rows = torch.arange(banned.shape[0], device=dev)[:, None].expand_as(banned)
            keep = banned >= 0
            logits = logits.clone()
            logits[rows[keep], banned[keep].to(dev)] = torch.finfo(logits.dtype).min
        log_probs = nn.functional.log_softmax(logits, dim=-1)
        log_probs = logits_processor(flat_running, log_probs)
        if raw_logits is not None:
            if output_logits:
                raw_logits.append(logits.clone())
            if output_scores:
                all_scores.append(log_probs.clone())

        log_probs = model._unflatten_beam_dim(log_probs, batch_size, num_beams)
        log_probs = log_probs + state["running_beam_scores"][:, :, None]
        log_probs = torch.reshape(log_probs, (batch_size, -1))
        topk_log_probs, topk_seqs, topk_beam_idx = model._get_top_k_continuations(
            accumulated_log_probs=log_probs, running_sequences=state["running_sequences"],
            running_beam_indices=state["running_beam_indices"], cur_len=cur_len, decoder_prompt_len=prompt_len,
            do_sample=False, beams_to_keep=beams_to_keep, num_beams=num_beams, batch_size=batch_size)
        hits = stopping_criteria(model._flatten_beam_dim(topk_seqs[:, :, : cur_len + 1]),
                                 tuple(all_scores) if all_scores is not None else None)
        hits = model._unflatten_beam_dim(hits, batch_size, beams_to_keep)
        state["running_sequences"], state["running_beam_scores"], state["running_beam_indices"] = \
            model._get_running_beams_for_next_iteration(
                topk_log_probs=topk_log_probs, topk_running_sequences=topk_seqs,
                topk_running_beam_indices=topk_beam_idx, next_token_hits_stopping_criteria=hits, num_beams=num_beams)
        state["sequences"], state["beam_scores"], state["beam_indices"], state["is_sent_finished"] = \
            model._update_finished_beams(
                sequences=state["sequences"], topk_running_sequences=topk_seqs, beam_scores=state["beam_scores"],
                topk_log_probs=topk_log_probs, beam_indices=state["beam_indices"],
                topk_running_beam_indices=topk_beam_idx, is_early_stop_heuristic_unsatisfied=state["early"],
                is_sent_finished=state["is_sent_finished"], next_token_hits_stopping_criteria=hits,
                top_num_beam_mask=top_num_beam_mask, num_beams=num_beams, cur_len=cur_len,
                decoder_prompt_len=prompt_len, length_penalty=gc.length_penalty, early_stopping=gc.early_stopping)
        beam_idx = model._flatten_beam_dim(state["running_beam_indices"][..., cur_len - prompt_len])
        key, cache = _cache_of(model_kwargs)
        # the look-ahead already ran the next step if every new beam continues with a looked-ahead candidate
        slots = None if event.kept is None or hasattr(model, "_reorder_cache") else \
            reuse.match(event.kept, beam_idx, model._flatten_beam_dim(state["running_sequences"][..., cur_len]))
        if slots is not None and reuse.reorder_into(cache, event.kept, beam_idx, slots):
            pending = (event.kept, beam_idx, slots)  # the cache holds the next step's keys already
        elif hasattr(model, "_reorder_cache"):
            model_kwargs[key] = model._reorder_cache(cache, beam_idx)
        else:
            cache.reorder_cache(beam_idx)
        parents = beam_idx
        if reorder is not None:
            reorder(parents=beam_idx)
        state["cur_len"] = cur_len = cur_len + 1
        state["early"] = model._check_early_stop_heuristic(
            is_early_stop_heuristic_unsatisfied=state["early"], running_beam_scores=state["running_beam_scores"],
            beam_scores=state["beam_scores"], is_sent_finished=state["is_sent_finished"], cur_len=cur_len,
            max_length=max_length, decoder_prompt_len=prompt_len, early_stopping=gc.early_stopping,
            length_penalty=gc.length_penalty)
        finished = not model._beam_search_has_unfinished_sequences(state["early"], state["is_sent_finished"], hits,
                                                                   gc.early_stopping)

    num_return = gc.num_return_sequences
    sequences = model._flatten_beam_dim(state["sequences"][:, :num_return, :])
    beam_scores = model._flatten_beam_dim(state["beam_scores"][:, :num_return])
    beam_indices = model._flatten_beam_dim(state["beam_indices"][:, :num_return, :])
    gen_len = ((beam_indices + 1).bool()).sum(dim=1).max()
    sequences, beam_indices = sequences[:, : prompt_len + gen_len], beam_indices[:, :gen_len]
    if not gc.return_dict_in_generate:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences, sequences_scores=beam_scores if output_scores else None,
        scores=tuple(all_scores) if output_scores else None, logits=tuple(raw_logits) if output_logits else None,
        beam_indices=beam_indices, cache=_cache_of(model_kwargs)[1])


def _rebuild_cache(model, model_kwargs, state, prompt_len, batch_size, num_beams) -> None:
    """Crop the cache to the prompt (identical for every beam of a prompt) and the attention mask to the restored
    length."""
    key, cache = _cache_of(model_kwargs)
    crop_to(cache, prompt_len)
    cur_len = state["cur_len"]
    for name in GROWING:  # what _update_model_kwargs_for_generation extends by one per step (last dim)
        if model_kwargs.get(name) is not None:
            model_kwargs[name] = model_kwargs[name][..., :cur_len]


def _forward_response(model, model_kwargs, state, prompt_len):
    """One forward over the restored beams' generated tokens (``q = n``) on the prompt's cache: the logits and
    cache of the restored step. With no token generated yet, the prompt's last token is re-fed (cache cropped to
    ``P - 1``)."""
    cur_len = state["cur_len"]
    ids = model._flatten_beam_dim(state["running_sequences"][:, :, :cur_len])
    n = cur_len - prompt_len
    if n == 0:
        crop_to(_cache_of(model_kwargs)[1], prompt_len - 1)
        n = 1
    inputs = model.prepare_inputs_for_generation(ids, next_sequence_length=n, **model_kwargs)
    return model(**inputs, return_dict=True)
