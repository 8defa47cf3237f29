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
    """

    def __init__(self, model, model_kwargs, input_ids, logits, num_beams, step, parents, banned, prompt_len):
        self._model, self._kwargs = model, model_kwargs
        self.input_ids, self.logits, self.num_beams, self.step = input_ids, logits, num_beams, step
        self.parents, self.banned, self.prompt_len = parents, banned, prompt_len
        self.rollback_to: int | None = None
        self.rollback_ban: torch.Tensor | None = None

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

    def rollback(self, generated: int, ban: torch.Tensor | None = None) -> None:
        """Restart the search from the beams as they were with ``generated`` tokens (``< step``), excluding
        ``ban`` ``(N, m)`` token ids of the restored rows at that step (``-1``: none). The last request of a step wins."""
        self.rollback_to, self.rollback_ban = int(generated), ban
