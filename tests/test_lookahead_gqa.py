"""A batched beam look-ahead on a CPU, with hallufix's attention function installed (any attention point),
runs grouped-query attention without copying the cache per query head
(:func:`hallufix.intercept.attention.fused_sdpa`), and gives what transformers' own SDPA path gives, on the four
tiny families (4 query heads over 2 key/value heads), one prompt and a left-padded batch of mixed image sizes."""
from __future__ import annotations

import pytest
import torch
import transformers.integrations.sdpa_attention as sdpa_module

from hallufix import hookimpl
from hallufix.decoding import Decoding
from hallufix.forward import LOOKAHEAD
from hallufix.intercept import attention as hallufix_attention
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
BEAM = Decoding.from_args("beam", num_beams=3)


class LookAhead:
    """Looks ahead the top 3 candidates of every beam in one batched forward at each step and keeps the logits;
    reads the last layer's attention rows as OPERA does (so hallufix's attention function runs the layers)."""

    name = "test-lookahead"

    def __init__(self):
        self.logits: list[torch.Tensor] = []

    @hookimpl
    def hallufix_configure(self, model):
        from hallufix import points

        return points.attn_probs([model.num_layers - 1], rows="last")

    @hookimpl
    def hallufix_attn_probs(self, event):
        pass

    @hookimpl
    def hallufix_beam_candidates(self, event):
        self.logits.append(event.lookahead_many(event.logits.topk(3, dim=-1).indices))


def _look_ahead(family, batch):
    s = tiny_session(family)
    images, qs = tiny_images(batch, mixed=batch > 1), list(QUESTIONS[:batch])
    probe = LookAhead()
    s.start([probe]).generate(images, qs, max_new_tokens=4, min_new_tokens=4, decoding=BEAM)
    return probe.logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [1, 2], ids=["single", "padded-batch"])
def test_lookahead_attention_reads_the_kv_heads_in_place(family, batch, monkeypatch):
    copies = []
    original = sdpa_module.repeat_kv

    def counting(hidden, n_rep):
        if LOOKAHEAD.get() > 1:  # inside a batched look-ahead forward (a prefill with padding copies as well)
            copies.append(tuple(hidden.shape))
        return original(hidden, n_rep)

    monkeypatch.setattr(sdpa_module, "repeat_kv", counting)
    fast = _look_ahead(family, batch)
    assert fast and copies == []  # no per-head copy of the cache in any look-ahead forward

    def transformers_path(st, module, query, key, value, attention_mask, scaling, dropout, kwargs):
        return sdpa_module.sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                                  dropout=dropout, **kwargs)[0]

    monkeypatch.setattr(hallufix_attention, "fused_sdpa", transformers_path)
    slow = _look_ahead(family, batch)
    assert copies  # transformers' path repeats the key/value heads for the masked multi-row call
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
