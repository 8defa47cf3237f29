"""Per-row seeded multinomial sampling as a ``LogitsProcessor``.

transformers' own sampling draws all rows with one ``torch.multinomial`` call on the global generator, so a row's
tokens change with its batch neighbours and the batch size (and a resumed run, whose batches start elsewhere,
draws other samples). :class:`RowSampler` instead keeps one ``torch.Generator`` per row, seeded from the row's own
key (:func:`hallufix.decoding.strategy.row_seed`), draws that row's token from its own distribution, and returns
scores that are 0 at the drawn token and ``-inf`` elsewhere; ``generate`` runs greedy (``do_sample=False``), so its
argmax takes exactly the drawn token. It must be the last processor of the list (after every method's edit, after
transformers' own min-length / EOS processors); :func:`hallufix.decoding.plan` puts it there.

The distribution is transformers' own warpers (``TemperatureLogitsWarper``, ``TopPLogitsWarper``) applied to the
scores the processor receives, then ``softmax`` in float32.
"""
from __future__ import annotations

import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper


class RowSampler(LogitsProcessor):
    """Draw one token per row from that row's generator.

    :param seeds: one int per batch row (``(B,)``; rows of one ``generate`` call). :param temperature,
        top_p: as :class:`~hallufix.decoding.Decoding`. Generators live on the scores' device (CPU generators for
        CPU, CUDA generators for CUDA; the same seed draws different streams on the two, so record the device).
    """

    def __init__(self, seeds: list[int], temperature: float = 1.0, top_p: float = 1.0):
        self.seeds = [int(s) for s in seeds]
        self.warpers = ([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []) + \
                       ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])
        self.generators: list[torch.Generator] | None = None
        #: ``(B,)`` tokens drawn at each step (for tests and diagnostics)
        self.drawn: list[torch.Tensor] = []

    def _generators(self, device: torch.device) -> list[torch.Generator]:
        if self.generators is None:
            self.generators = []
            for s in self.seeds:
                g = torch.Generator(device=device)
                g.manual_seed(s)
                self.generators.append(g)
        return self.generators

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B = scores.shape[0]
        if B != len(self.seeds):
            raise ValueError(f"RowSampler has {len(self.seeds)} row seeds for a batch of {B} rows")
        warped = scores
        for w in self.warpers:
            warped = w(input_ids, warped)
        probs = torch.softmax(warped.float(), dim=-1)
        gens = self._generators(scores.device)
        # one draw per row from its own generator: row b's stream never sees another row's draws
        tokens = torch.stack([torch.multinomial(probs[b], 1, generator=gens[b])[0] for b in range(B)])
        self.drawn.append(tokens)
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, tokens[:, None], 0.0)
        return forced
