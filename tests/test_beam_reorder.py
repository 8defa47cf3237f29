"""Per-row decode state under beam search follows the beams (``hallufix_beam_reorder``): CLVA's running Eq. 1
sums include each hypothesis' own generated rows, so the logits beam search records for the returned hypothesis
equal a one-row forced decode of that hypothesis' tokens with CLVA on, on the four tiny families (mixed image
sizes, a left-padded batch); without the reorder they do not."""
from __future__ import annotations

import pytest
import torch
from test_vcd import forced_logits

from hallufix.decoding import Decoding
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix_clva.method import CLVA, Config

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
BEAM = Decoding.from_args("beam", num_beams=3)
#: anchors that move with every generated row: a narrow head split and a low z threshold
SETTINGS = dict(lambda_vis=0.3, tau=1.0, alpha=4.0, beta=0.5)
CLVA_KEYS = [f"{k}={v}" for k, v in SETTINGS.items()]
T = 6


class CLVANoReorder(CLVA):
    """CLVA without its beam-reorder hook (the state stays with the cache row, not the hypothesis)."""

    name = "clva"
    hallufix_beam_reorder = None


def _beam_logits(s, method_cls, images, qs):
    run = s.start([method_cls(Config(**SETTINGS))])
    return run.generate(images, qs, max_new_tokens=T, min_new_tokens=T, decoding=BEAM, output_logits=True)


def _worst(s, method_cls, images, qs) -> float:
    """Largest difference between the returned hypotheses' recorded logits and their forced one-row decodes
    (columns both leave finite: ``min_new_tokens`` bans EOS before the forced run's hook sees it)."""
    worst = 0.0
    for b, out in enumerate(_beam_logits(s, method_cls, images, qs)):
        tokens = out.token_ids.tolist()
        expected = forced_logits(s, ["clva"], {"clva": CLVA_KEYS}, images[b], qs[b], tokens, noise=False)
        keep = torch.isfinite(expected).all(0)
        worst = max(worst, float((out.logits[: len(tokens)] - expected)[:, keep].abs().max()))
    return worst


@pytest.mark.parametrize("family", FAMILIES)
def test_clva_state_follows_the_beams(family):
    s = tiny_session(family)
    images, qs = tiny_images(3, mixed=True)[1:], list(QUESTIONS[:2])
    assert _worst(s, CLVA, images, qs) <= 1e-5


def test_without_the_reorder_the_state_belongs_to_another_beam():
    """The check above can fail: with the hook removed, a reordered row keeps another hypothesis' sums."""
    s = tiny_session("llava")
    images, qs = tiny_images(3, mixed=True)[1:], list(QUESTIONS[:2])
    assert _worst(s, CLVANoReorder, images, qs) > 1e-3

@pytest.mark.parametrize("family", FAMILIES)
def test_per_question_diagnostics_under_beams(family):
    """DoLa and MemVR keep per-question diagnostics when every forward carries ``num_beams`` rows per question
    (``BatchInfo.beams``): DoLa counts one premature-layer choice per beam and step."""
    s = tiny_session(family)
    images, qs = tiny_images(3, mixed=True)[1:], list(QUESTIONS[:2])
    for out in s.start(["dola"]).generate(images, qs, max_new_tokens=T, min_new_tokens=T, decoding=BEAM):
        assert sum(out.diagnostics["dola"]["premature_layers"].values()) == BEAM.num_beams * T
    for out in s.start(["memvr"]).generate(images, qs, max_new_tokens=T, min_new_tokens=T, decoding=BEAM):
        retraced = out.diagnostics["memvr"]["retraced_at"]
        assert all(0 < n <= BEAM.num_beams * T for n in retraced.values())
