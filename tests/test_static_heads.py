"""Static head gains (``attn_heads(..., static_gains=True, fold=...)``): the core applies, folds and releases them,
also when methods are stacked; the deprecated ``HeadsEvent.fold`` / ``done`` still work and warn."""
from __future__ import annotations

import pytest
import torch

from hallufix import hookimpl
from hallufix import points as P
from hallufix.testing.leaks import assert_no_hook_leaks, hook_snapshot
from hallufix.testing.models import tiny_images, tiny_session

LAYER = 1
QS = ["is there a cat ?", "what colour is the large square in the middle of the picture ?"]  # left padding


class Gains:
    """Head gains ``g`` ``(H,)`` or ``(B, H)`` at ``LAYER``: static (hook at prefill only) or plain (every forward)."""

    def __init__(self, name, g, static=True, fold=False):
        self.name, self.g, self.static, self.fold, self.calls = name, g, static, fold, 0

    @hookimpl
    def hallufix_configure(self, model):
        return P.attn_heads([LAYER], static_gains=self.static, fold=self.fold)

    @hookimpl
    def hallufix_attn_heads(self, event):
        self.calls += 1
        event.scale(self.g)


def _run(s, plugins, n=2, n_new=4):
    run = s.start(plugins)
    outs = run.generate(tiny_images(n), QS[:n], max_new_tokens=n_new, min_new_tokens=n_new, output_logits=True)
    return run, outs


def _close(a, b, tol=1e-5):
    for x, y in zip(a, b):
        assert torch.equal(x.token_ids, y.token_ids)
        assert (x.logits - y.logits).abs().max() <= tol


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_stacked_static_gains_multiply_fold_and_release_the_layer(family):
    s = tiny_session(family)
    H = s.info.num_heads
    g1 = torch.linspace(0.5, 1.5, H)
    g2 = torch.linspace(2.0, 1.0, H)
    before = hook_snapshot(s.model)
    a, b = Gains("static-a", g1, fold=True), Gains("static-b", g2, fold=True)
    run, folded = _run(s, [a, b])
    assert a.calls == 1 and b.calls == 1  # prefill only
    paths = run.hook_stats["paths"]
    assert paths.get(f"{LAYER}:sdpa", 0) == 4  # folded at prefill, then released: plain SDPA at the 3 steps
    _, plain = _run(s, [Gains("plain", g1 * g2, static=False)])
    _close(folded, plain)
    assert_no_hook_leaks(s.model, before)  # o_proj restored bit-exactly
    _, base = _run(s, [])
    assert (base[0].logits - folded[0].logits).abs().max() > 1e-4  # the gains are real


def test_static_per_row_gains_are_applied_by_the_core_at_every_decode_step():
    s = tiny_session("llava")
    H = s.info.num_heads
    g = torch.stack([torch.linspace(0.5, 1.5, H), torch.linspace(1.5, 0.5, H)])  # (B, H): no single vector
    static = Gains("static", g, fold=True)
    run, got = _run(s, [static])
    assert static.calls == 1
    assert run.hook_stats["fired"][f"attn_heads.{LAYER}"] == 1
    _, want = _run(s, [Gains("plain", g, static=False)])
    _close(got, want)


def test_static_gains_beside_a_plain_heads_hook_keep_the_plain_one_running():
    s = tiny_session("qwen2-vl")
    H = s.info.num_heads
    static, plain = Gains("static", torch.full((H,), 1.25), fold=True), Gains("plain", torch.linspace(0.8, 1.2, H),
                                                                             static=False)
    _, got = _run(s, [static, plain])
    assert static.calls == 1 and plain.calls == 4
    _, want = _run(s, [Gains("both", torch.full((H,), 1.25) * torch.linspace(0.8, 1.2, H), static=False)])
    _close(got, want)


class Keeps:
    """A plain heads hook at ``LAYER`` that keeps a reference to the outputs it was handed, and a copy of them."""

    name = "keeps"

    def __init__(self):
        self.kept = []

    @hookimpl
    def hallufix_configure(self, model):
        return P.attn_heads([LAYER])

    @hookimpl
    def hallufix_attn_heads(self, event):
        self.kept.append((event.output, event.output.clone()))


@pytest.mark.parametrize("fold", [False, True])
def test_static_gains_scale_in_place_only_outputs_no_plain_hook_saw(fold):
    # unfolded static gains multiply the kernel's own output in place; a plain hook's tensor must stay as handed
    s = tiny_session("llava")
    H = s.info.num_heads
    g = torch.stack([torch.linspace(0.5, 1.5, H), torch.linspace(1.5, 0.5, H)])  # (B, H): scaled, never folded
    keeps = Keeps()
    _, got = _run(s, [keeps, Gains("static", g, fold=fold)])
    assert len(keeps.kept) == 4
    for ref, copy in keeps.kept:
        assert torch.equal(ref, copy)
    _, want = _run(s, [Gains("plain", g, static=False)])
    _close(got, want)


def test_static_gains_of_one_release_the_layer_and_outputs_cannot_be_assigned():
    s = tiny_session("llava")
    ones = Gains("ones", torch.ones(s.info.num_heads))
    run, got = _run(s, [ones], n=1)
    assert ones.calls == 1 and run.hook_stats["paths"].get(f"{LAYER}:sdpa", 0) == 4
    _, base = _run(s, [], n=1)
    _close(got, base, tol=1e-6)

    class Assigns(Gains):
        @hookimpl
        def hallufix_attn_heads(self, event):
            event.output = event.output * 2

    with pytest.raises(TypeError, match="only scales"):
        _run(s, [Assigns("assigns", None)], n=1)
    with pytest.raises(ValueError, match="static_gains"):
        P.attn_heads([1], fold=True)


def test_deprecated_fold_and_done_warn_and_still_work():
    s = tiny_session("llava")
    H = s.info.num_heads
    g = torch.linspace(0.5, 1.5, H)

    class OldFold:
        name = "old-fold"

        @hookimpl
        def hallufix_configure(self, model):
            return P.attn_heads([LAYER])

        @hookimpl
        def hallufix_attn_heads(self, event):
            if event.forward.phase == "prefill":
                event.fold(g)

    with pytest.warns(DeprecationWarning, match="static_gains"):
        run, got = _run(s, [OldFold()])
    assert run.hook_stats["paths"].get(f"{LAYER}:sdpa", 0) == 4  # released after the fold, as before
    _, want = _run(s, [Gains("plain", g, static=False)])
    _close(got, want)
