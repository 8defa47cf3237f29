"""Install / remove: nothing leaks after a normal run or a run whose plugin raises; unfired points are errors;
typed order is call order; stacking algebra."""
from __future__ import annotations

import pytest
import torch

from hallufix import hookimpl
from hallufix import points as P
from hallufix.intercept import HookNotFiredError
from hallufix.testing.leaks import assert_no_hook_leaks, hook_snapshot
from hallufix.testing.models import tiny_images, tiny_session

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")


class EveryPoint:
    """Declares every kind of layer point and edits each a little; raises at ``raise_at`` decode step."""

    name = "every-point"

    def __init__(self, raise_at=None):
        self.raise_at = raise_at

    @hookimpl
    def hallufix_configure(self, model):
        return (P.attn_bias([0]) + P.attn_probs([1], edits=True) + P.attn_heads([1]) + P.layer_input([1])
                + P.attn_kv([0]) + P.logits())

    @hookimpl
    def hallufix_forward_start(self, forward):
        if self.raise_at is not None and forward.step == self.raise_at:
            raise RuntimeError("planted failure")

    @hookimpl
    def hallufix_attn_bias(self, event):
        event.add(torch.where(event.visual_keys, 0.5, 0.0))

    @hookimpl
    def hallufix_attn_probs(self, event):
        p = event.probs * 1.0
        event.probs = p / p.sum(-1, keepdim=True)

    @hookimpl
    def hallufix_attn_heads(self, event):
        event.scale(torch.full((event.output.shape[2],), 1.1))

    @hookimpl
    def hallufix_layer_input(self, event):
        event.hidden = event.hidden * 1.0

    @hookimpl
    def hallufix_attn_kv(self, event):
        event.value = event.value * 1.0

    @hookimpl
    def hallufix_logits(self, event):
        event.scores = event.scores + 0.0


def _gen(session, plugins, n_new=4):
    return session.start(plugins).generate(tiny_images(1), ["is there a cat ?"], max_new_tokens=n_new,
                                           min_new_tokens=n_new, output_logits=True)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_nothing_leaks_after_normal_and_failed_runs(family):
    s = tiny_session(family)
    before = hook_snapshot(s.model)
    reference = _gen(s, [])
    run = s.start([EveryPoint()])
    run.generate(tiny_images(1), ["is there a cat ?"], max_new_tokens=4, min_new_tokens=4)
    assert set(run.hook_stats["fired"]) == set(run.declarations()["every-point"])
    assert_no_hook_leaks(s.model, before)
    with pytest.raises(RuntimeError, match="planted failure"):
        _gen(s, [EveryPoint(raise_at=2)])
    assert_no_hook_leaks(s.model, before)
    after = _gen(s, [])
    assert torch.equal(after.logits, reference.logits)


def test_unfired_point_is_an_error():
    s = tiny_session("llava")

    class DecodeOnly:
        name = "decode-only"

        @hookimpl
        def hallufix_configure(self, model):
            return P.attn_bias([0], phases={"decode"})

        @hookimpl
        def hallufix_attn_bias(self, event):
            pass

    class Bias0:
        name = "bias0"

        @hookimpl
        def hallufix_configure(self, model):
            return P.attn_bias([0])

        @hookimpl
        def hallufix_attn_bias(self, event):
            pass

    # decode-only points with a single generated token: the decode phase never ran, so no error
    s.start([DecodeOnly()]).generate(tiny_images(1), ["hi"], max_new_tokens=1, min_new_tokens=1)

    # an adapter that routes layer 0 to the wrong module: the declared point never fires -> error, not a no-op
    from hallufix.api import Session

    class MisroutingAdapter(type(s.adapter)):
        def decoder_layers(self, model):
            layers = super().decoder_layers(model)
            dummy = torch.nn.Module()
            dummy.self_attn = torch.nn.Module()
            return [dummy] + layers[1:]

    bad = Session(s.model, s.processor, name="misrouted")
    bad.adapter = MisroutingAdapter()
    with pytest.raises(HookNotFiredError, match="attn_bias.0"):
        bad.start([Bias0()]).generate(tiny_images(1), ["hi"], max_new_tokens=2, min_new_tokens=2)


def test_declared_point_without_its_hook_is_rejected_at_start():
    s = tiny_session("llava")

    class NoImpl:
        name = "no-impl"

        @hookimpl
        def hallufix_configure(self, model):
            return P.attn_heads([0])

    with pytest.raises(ValueError, match="no-impl.*hallufix_attn_heads"):
        s.start([NoImpl()])


def test_typed_order_is_call_order_and_stacking_algebra():
    s = tiny_session("llava")
    calls = []

    class Tagger:
        def __init__(self, name, gain):
            self.name, self.gain = name, gain

        @hookimpl
        def hallufix_configure(self, model):
            return P.attn_heads([1]) + P.attn_bias([1])

        @hookimpl
        def hallufix_attn_heads(self, event):
            calls.append(self.name)
            event.scale(torch.full((event.output.shape[2],), self.gain))

        @hookimpl
        def hallufix_attn_bias(self, event):
            event.add(torch.where(event.visual_keys, 0.3, 0.0))

    run = s.start([Tagger("a", 2.0), Tagger("b", 0.5), Tagger("c", 1.0)])
    assert run.order == ["a", "b", "c"]
    run.generate(tiny_images(1), ["hi"], max_new_tokens=1, min_new_tokens=1)
    assert calls[:3] == ["a", "b", "c"]

    class OneBias:
        name = "one"

        @hookimpl
        def hallufix_configure(self, model):
            return P.attn_bias([1])

        @hookimpl
        def hallufix_attn_bias(self, event):
            event.add(torch.where(event.visual_keys, 0.9, 0.0))

    class Gain:
        name = "gain"

        @hookimpl
        def hallufix_configure(self, model):
            return P.attn_heads([1]) + P.attn_bias([1])

        @hookimpl
        def hallufix_attn_heads(self, event):
            event.scale(torch.full((event.output.shape[2],), 1.0))

        @hookimpl
        def hallufix_attn_bias(self, event):
            pass

    # three biases of 0.3 add up to one of 0.9; gains 2 * 0.5 * 1 multiply to 1
    stacked = _gen(s, [Tagger("a", 2.0), Tagger("b", 0.5), Tagger("c", 1.0)])
    single = _gen(s, [OneBias(), Gain()])
    assert (stacked.logits - single.logits).abs().max() <= 1e-5


def test_image_hook_chains_and_capture_runs_without_other_methods():
    s = tiny_session("llava")
    seen = {}

    class Dim:
        def __init__(self, name, f):
            self.name, self.f = name, f

        @hookimpl
        def hallufix_configure(self, model):
            return P.input_image()

        @hookimpl
        def hallufix_input_image(self, event):
            cap = event.capture(event.images, event.questions, layers=[0, 2], hidden_norms=True)
            seen[self.name] = cap
            event.images = [im.point(lambda v: int(v * self.f)) for im in event.images]

    img = tiny_images(1)
    both = _gen_with(s, [Dim("a", 0.5), Dim("b", 0.5)], img)
    once = _gen_with(s, [Dim("c", 0.25)], img)
    assert torch.equal(both.token_ids, once.token_ids)
    cap = seen["a"]
    n = s.info.visual_tokens_per_image
    assert cap.last_visual[0].shape == (1, s.info.num_heads, n)
    assert cap.hidden_norms[2].shape == (1, n)
    assert torch.all(cap.last_mass[0] <= 1.0 + 1e-6)


def _gen_with(s, plugins, images):
    return s.start(plugins).generate(images, ["is there a cat ?"], max_new_tokens=3, min_new_tokens=3,
                                     output_logits=True)[0]


def test_fold_head_gains_equals_scaling_and_restores_weights():
    s = tiny_session("qwen2-vl")
    before = hook_snapshot(s.model)
    g = torch.tensor([1.5, 0.5, 1.0, 2.0])

    class Scale:
        name = "scale"

        def __init__(self, fold):
            self.fold = fold

        @hookimpl
        def hallufix_configure(self, model):
            return P.attn_heads([1], phases={"prefill"} if self.fold else {"prefill", "decode"})

        @hookimpl
        def hallufix_attn_heads(self, event):
            event.fold(g) if self.fold else event.scale(g)

    folded = _gen(s, [Scale(True)])
    scaled = _gen(s, [Scale(False)])
    assert torch.equal(folded.token_ids, scaled.token_ids)
    assert (folded.logits - scaled.logits).abs().max() <= 1e-5
    assert_no_hook_leaks(s.model, before)


class DoneAtPrefill:
    """Scales heads at ``layer`` by 1 (a no-op edit) and says ``done`` at prefill; counts its calls."""

    def __init__(self, name, layer=1, done=True):
        self.name, self.layer, self.say_done, self.calls = name, layer, done, 0

    @hookimpl
    def hallufix_configure(self, model):
        return P.attn_heads([self.layer])

    @hookimpl
    def hallufix_attn_heads(self, event):
        self.calls += 1
        if event.forward.phase == "prefill" and self.say_done:
            event.done()


def test_done_releases_a_layer_only_when_its_method_is_alone_there():
    s = tiny_session("llava")
    images, qs = tiny_images(1), ["is there a cat ?"]
    alone = DoneAtPrefill("done-alone")
    run = s.start([alone])
    out = run.generate(images, qs, max_new_tokens=4, min_new_tokens=4)
    assert alone.calls == 1  # prefill only: the 3 decode steps skip the layer's hook
    assert run.hook_stats["paths"].get("1:sdpa", 0) >= 4
    plain = s.start([]).generate(images, qs, max_new_tokens=4, min_new_tokens=4)
    assert torch.equal(out[0].token_ids, plain[0].token_ids)
    # another method still hooks that layer during decoding: nothing is released, both keep being called
    first, other = DoneAtPrefill("done-first"), DoneAtPrefill("keeps-going", done=False)
    s.start([first, other]).generate(images, qs, max_new_tokens=4, min_new_tokens=4)
    assert first.calls == 4 and other.calls == 4
