"""The event of ``hallufix_beam_candidates``: one beam-search step's raw next-token logits, look-ahead forwards and
rollback requests (see :mod:`hallufix.decoding.beam`)."""
from __future__ import annotations

import torch


class CandidateEvent:
    """One beam-search step, before transformers' ``log_softmax`` and the logits processors.

    Attributes:
        logits: ``(N, V)`` float32 raw next-token logits of the ``N = B * num_beams`` running beams (replace to
            edit; chained in typed order). A method restricting the step to candidates sets the others to a large
            negative value (OPERA: ``-999``).
        input_ids: ``(N, cur_len)`` the running beams (prompt + ``step`` generated tokens).
        num_beams, step (tokens generated so far), prompt_len (``P``, the padded prompt length).
        parents: ``(N,)`` long, for each running beam the row it continued at the previous step (the cache was
            reordered with it); ``None`` at the first step and right after a rollback (the rows were rebuilt).
        banned: ``(N, m)`` tokens excluded at this step after a rollback, else ``None``.
        reused: ``True`` when this step ran no decoder forward: the previous step's kept look-ahead supplied its
            cache and logits (:mod:`hallufix.decoding.reuse`), so no forward hook fired for it (they fired in that
            look-ahead, where the chosen token was candidate ``j`` of its parent row).
        can_keep: whether :meth:`lookahead_many` may keep its forward (no other method has decode-step hooks that
            a reused step would skip, and the cache is a plain dynamic one).
        kept: the look-ahead kept at this step (``lookahead_many(..., keep=True)``), else ``None``.
    """

    def __init__(self, model, model_kwargs, input_ids, logits, num_beams, step, parents, banned, prompt_len,
                 reuse_ok: bool = False, reused: bool = False):
        self._model, self._kwargs = model, model_kwargs
        self.input_ids, self.logits, self.num_beams, self.step = input_ids, logits, num_beams, step
        self.parents, self.banned, self.prompt_len = parents, banned, prompt_len
        self.reused, self._reuse_ok = reused, reuse_ok
        self.kept = None
        self.rollback_to: int | None = None
        self.rollback_ban: torch.Tensor | None = None

    @property
    def can_keep(self) -> bool:
        from hallufix.decoding.beam import _cache_of
        from hallufix.decoding.reuse import keepable

        return self._reuse_ok and keepable(_cache_of(self._kwargs)[1])

    def lookahead(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the model one step on ``tokens`` ``(N,)`` appended to the beams (every active hook fires, as at a
        decode step) and return that forward's logits ``(N, V)`` float32; the cache is cropped back, so the
        search is unchanged."""
        from hallufix.decoding.beam import _cache_of, crop_to

        _, cache = _cache_of(self._kwargs)
        length = cache.get_seq_length()
        ids = torch.cat([self.input_ids, tokens.to(self.input_ids)[:, None]], dim=-1)
        inputs = self._model.prepare_inputs_for_generation(ids, next_sequence_length=1, **self._kwargs)
        try:
            out = self._model(**inputs, return_dict=True)
        finally:
            crop_to(cache, length)
        return out.logits[:, -1, :].float()

    @property
    def can_lookahead_many(self) -> bool:
        """Whether :meth:`lookahead_many` can run: the language model's attention takes a prepared 4D mask
        (SDPA, eager, hallufix's function; not the flash / flex kernels)."""
        from hallufix.intercept.lookahead import takes_4d_mask

        return takes_4d_mask(self._model)

    def lookahead_many(self, tokens: torch.Tensor, logits: bool = True, keep: bool = False) -> torch.Tensor | None:
        """Look ahead ``k`` candidates of every beam in one forward: ``tokens`` ``(N, k)`` are fed as ``k`` new
        query rows that all sit at the next position, each seeing its beam's cache and itself only (a 4D mask;
        :mod:`hallufix.intercept.lookahead`). Every active hook fires once, as at a decode step of ``q_len = k``
        rows with ``forward.lookahead = k``. Returns the logits ``(N, k, V)`` float32 (``[:, j]`` equals
        ``lookahead(tokens[:, j])`` up to float rounding), or ``None`` with ``logits=False`` (a method that only
        reads the forward's hooks, as OPERA its attention, skips ``k - 1`` rows of the ``lm_head`` product); the
        cache is cropped back, so the search is unchanged.
        ``keep=True`` (honoured where :attr:`can_keep`): the forward is kept, and when every beam the search
        continues continues with one of its candidates, that forward *is* the next decode step
        (:mod:`hallufix.decoding.reuse`): the next event has ``reused=True`` and no decoder forward runs for it.
        Raises ``ValueError`` where :attr:`can_lookahead_many` is false (use :meth:`lookahead` per column)."""
        from hallufix.decoding import reuse
        from hallufix.decoding.beam import _cache_of, crop_to
        from hallufix.intercept.lookahead import OutputCapture, lookahead_inputs
        from hallufix.forward import LOOKAHEAD

        if tokens.dim() != 2 or tokens.shape[0] != self.input_ids.shape[0]:
            raise ValueError(f"lookahead_many takes (N={self.input_ids.shape[0]}, k) candidate ids, got "
                             f"{tuple(tokens.shape)}")
        _, cache = _cache_of(self._kwargs)
        length = int(cache.get_seq_length())
        tokens = tokens.to(self.input_ids)
        ids = torch.cat([self.input_ids, tokens[:, :1]], dim=-1)
        step = self._model.prepare_inputs_for_generation(ids, next_sequence_length=1, **self._kwargs)
        inputs = lookahead_inputs(self._model, step, tokens, length, logits)
        norm = reuse.final_norm(self._model) if keep and self.can_keep else None
        mark = LOOKAHEAD.set(tokens.shape[1])
        try:
            if norm is None:
                out = self._model(**inputs, return_dict=True)
            else:
                with OutputCapture(norm) as captured:
                    out = self._model(**inputs, return_dict=True)
                self.kept = reuse.keep(cache, length, tokens, captured.output)
        finally:
            LOOKAHEAD.reset(mark)
            crop_to(cache, length)
        return out.logits[:, -tokens.shape[1]:].float() if logits else None

    def rollback(self, generated: int, ban: torch.Tensor | None = None) -> None:
        """Restart the search from the beams as they were with ``generated`` tokens (``< step``), excluding
        ``ban`` ``(N, m)`` token ids of the restored rows at that step (``-1``: none). The last request of a step wins."""
        self.rollback_to, self.rollback_ban = int(generated), ban
