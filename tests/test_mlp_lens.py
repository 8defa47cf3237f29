"""The MLP hook points (``mlp_in.{i}`` / ``.mlp.out``) and the logit lens (``logit_lens.{i}``) on
every family: the lens equals ``lm_head(norm(hidden_states[i]))`` of transformers' own ``output_hidden_states`` at
prefill and every decode step of a left-padded batch of mixed image sizes; MLP reads equal plain module hooks and
edits equal the same edit made by plain hooks; only declared layers get hooks; nothing is left behind."""
from __future__ import annotations

import pytest
import torch

from hallufix import hookimpl
from hallufix import points as P
from hallufix.events_lens import lens_logits
from hallufix.testing.leaks import assert_no_hook_leaks, hook_snapshot
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
T = 3


class LensReader:
    name = "lens-reader"

    def __init__(self, layers):
        self.layers, self.got = layers, []

    @hookimpl
    def hallufix_configure(self, model):
        return P.logit_lens(self.layers)

    @hookimpl
    def hallufix_logit_lens(self, event):
        self.got.append((event.forward.step, event.layer, event.logits(), event.logits(norm=False)))


@pytest.mark.parametrize("family", FAMILIES)
def test_lens_equals_output_hidden_states(family):
    s = tiny_session(family)
    images, questions = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    L = s.info.num_layers
    reader = LensReader(range(L))
    s.start([reader], {}).generate(images, questions, max_new_tokens=T, min_new_tokens=T)
    inputs = s.adapter.inputs(s.processor, [[im] for im in images], questions, s.device)
    with torch.inference_mode():
        out = s.model.generate(**inputs, max_new_tokens=T, min_new_tokens=T, do_sample=False,
                               return_dict_in_generate=True, output_hidden_states=True)
    head, norm = s.model.get_output_embeddings(), s.adapter.final_norm(s.model)
    assert len(reader.got) == T * L
    for step, layer, normed, raw in reader.got:
        h = out.hidden_states[step][layer][:, -1]
        with torch.inference_mode():
            want_normed, want_raw = head(norm(h)).float(), head(h).float()
        assert normed.dtype == torch.float32 and normed.shape == (3, head.out_features)
        torch.testing.assert_close(normed, want_normed, atol=1e-5, rtol=0)
        torch.testing.assert_close(raw, want_raw, atol=1e-5, rtol=0)


class MLPReader:
    name = "mlp-reader"

    def __init__(self, layers, scale_in=None, scale_out=None):
        self.layers, self.scale_in, self.scale_out = layers, scale_in, scale_out
        self.ins, self.outs = [], []

    @hookimpl
    def hallufix_configure(self, model):
        return P.mlp_in(self.layers) + P.mlp_out(self.layers)

    @hookimpl
    def hallufix_mlp_in(self, event):
        self.ins.append(event.hidden.clone())
        if self.scale_in is not None:
            event.hidden = event.hidden * self.scale_in

    @hookimpl
    def hallufix_mlp_out(self, event):
        assert event.input.shape == event.output.shape
        self.outs.append((event.input.clone(), event.output.clone()))
        if self.scale_out is not None:
            event.output = event.output * self.scale_out


def _plain(s, images, questions, layer, scale_in=None, scale_out=None):
    """Plain module hooks on the layer's MLP: record its input / output, optionally make the same edits."""
    inputs = s.adapter.inputs(s.processor, [[im] for im in images], questions, s.device)
    mlp = s.adapter.decoder_layers(s.model)[layer].mlp
    ins, outs = [], []

    def pre(module, args):
        ins.append(args[0].clone())
        return None if scale_in is None else (args[0] * scale_in,)

    def post(module, args, out):
        outs.append((args[0].clone(), out.clone()))
        return None if scale_out is None else out * scale_out

    handles = [mlp.register_forward_pre_hook(pre), mlp.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            out = s.model.generate(**inputs, max_new_tokens=T, min_new_tokens=T, do_sample=False,
                                   return_dict_in_generate=True, output_logits=True)
    finally:
        for h in handles:
            h.remove()
    return ins, outs, torch.stack(out.logits, 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_mlp_points_read_and_edit_like_plain_hooks(family):
    s = tiny_session(family)
    images, questions = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    kw = dict(max_new_tokens=T, min_new_tokens=T, output_logits=True)
    reader = MLPReader([1])
    s.start([reader], {}).generate(images, questions, **kw)
    ins, outs, _ = _plain(s, images, questions, 1)
    assert len(reader.ins) == len(ins) == T and len(reader.outs) == T
    for a, b in zip(reader.ins, ins):
        assert torch.equal(a, b)
    for (xa, fa), (xb, fb) in zip(reader.outs, outs):
        assert torch.equal(xa, xb) and torch.equal(fa, fb)
    editor = MLPReader([2], scale_in=1.5, scale_out=0.5)
    gens = s.start([editor], {}).generate(images, questions, **kw)
    _, _, ref = _plain(s, images, questions, 2, scale_in=1.5, scale_out=0.5)
    base = s.start([], {}).generate(images, questions, **kw)
    for i, g in enumerate(gens):
        torch.testing.assert_close(g.logits, ref[i][: len(g.logits)], atol=1e-6, rtol=0)
        assert not torch.equal(g.logits, base[i].logits)


class HookCounter:
    """Counts the MLP / layer hooks present while a forward runs."""

    name = "hook-counter"

    def __init__(self, model, adapter):
        self.dec, self.seen = adapter.decoder_layers(model), []

    @hookimpl
    def hallufix_configure(self, model):
        return P.mlp_out([1]) + P.logit_lens([2], phases={"decode"})

    @hookimpl
    def hallufix_forward_start(self, forward):
        self.seen.append([(len(l.mlp._forward_hooks), len(l._forward_pre_hooks)) for l in self.dec])

    @hookimpl
    def hallufix_mlp_out(self, event):
        if event.forward.phase == "decode":
            with pytest.raises(LookupError, match="no logit lens at layer 2"):
                lens_logits(event, 2)  # layer 2 is not reached yet when layer 1's MLP runs

    @hookimpl
    def hallufix_logit_lens(self, event):
        assert event.forward.phase == "decode"


def test_hooks_only_on_declared_layers_and_removed():
    s = tiny_session("llava")
    before = hook_snapshot(s.model)
    counter = HookCounter(s.model, s.adapter)
    run = s.start([counter], {})
    run.generate(tiny_images(1), [QUESTIONS[0]], max_new_tokens=T, min_new_tokens=T)
    assert counter.seen[0] == [(0, 0), (1, 0), (0, 1), (0, 0)]
    assert run.hook_stats["fired"]["mlp_out.1"] == T
    assert run.hook_stats["fired"]["logit_lens.2"] == T - 1  # decode only
    assert_no_hook_leaks(s.model, before)


def test_point_names():
    assert P.parse_name("mlp_in.3") == ("mlp_in", 3)
    assert P.parse_name("mlp_out.3") == ("mlp_out", 3)
    assert P.parse_name("logit_lens.0") == ("logit_lens", 0)
    assert [p.name for p in P.logit_lens([2, 0])] == ["logit_lens.0", "logit_lens.2"]
    assert "mlp_out.1" in P.all_names(2) and "logit_lens.1" in P.all_names(2)
    assert P.select("mlp_*", 2) == ["mlp_in.0", "mlp_out.0", "mlp_in.1",
                                                "mlp_out.1"]
