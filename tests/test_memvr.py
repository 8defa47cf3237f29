"""MemVR against an independent eager implementation of the official code's equations (top-10 entropy trigger on
the logit lens after layer l, re-injection of the visual tokens as FFN key-value memory at layer l + 1, with the
official w1 / w2 scales) on every family, single and left-padded batches of mixed image sizes; strength 0;
stacking with CLVA; the depth translation; and the contract suite."""
from __future__ import annotations

import math

import pytest
import torch

from hallufix.testing import MethodContract
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session
from hallufix_memvr.method import Config, retrace_layers

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")
T = 4


def _eager(s, images, questions, start, end, gamma, alpha, k=10, stack=None):
    """Greedy generate with plain module hooks doing what the official LlamaModel.forward / LlamaMLP do, row by row.
    ``stack``: run hallufix with these methods instead of plain ``generate``, the reference hooks still installed."""
    rows = [[im] for im in images]
    inputs = s.adapter.inputs(s.processor, rows, questions, s.device)
    mask = inputs["attention_mask"].bool()
    image = (inputs["input_ids"] == s.adapter.image_token_id(s.model)) & mask
    dec = s.adapter.decoder_layers(s.model)
    norm, head = s.adapter.final_norm(s.model), s.model.get_output_embeddings()
    B = mask.shape[0]
    st = {"Z": None, "inject": [None] * B, "done": [False] * B, "prefill": True}

    def first(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        st["prefill"] = h.shape[1] > 1
        if st["prefill"]:
            st["Z"] = [h[b][image[b]].float() for b in range(B)]
        st["inject"], st["done"] = [None] * B, [False] * B

    def after(l):
        def hook(module, args, kwargs, out):
            h = out[0] if isinstance(out, tuple) else out
            if not start < l < end:
                return None
            for b in range(B):
                if st["done"][b]:
                    continue
                logits = head(norm(h[b, -1])).float()
                p = torch.softmax(torch.topk(logits, k).values, -1)
                entropy = float(-(p * p.log()).sum() / math.log(k))
                if entropy > gamma:
                    st["done"][b], st["inject"][b] = True, l + 1
            return None
        return hook

    def ffn(j, mlp):
        def hook(module, args, out):
            x = args[0]
            new = out.clone()
            for b in range(B):
                z = st["Z"][b]
                if st["inject"][b] != j or z.numel() == 0:
                    continue
                w1 = (mlp.up_proj.weight.abs().mean() / z.abs().mean()) * z
                w2 = (mlp.down_proj.weight.abs().mean() / z.abs().mean()) * z.T
                xb, fb = x[b].float(), out[b].float()
                adapter = (xb @ w1.T) @ w2.T
                real = mask[b] if st["prefill"] else torch.ones(xb.shape[0], dtype=torch.bool)
                scaled = (fb[real].abs().mean() / adapter[real].abs().mean()) * adapter
                new[b] = (fb * (1 - alpha) + scaled * alpha).to(out.dtype)
            return new
        return hook

    handles = [dec[0].register_forward_pre_hook(first, with_kwargs=True)]
    handles += [layer.register_forward_hook(after(l), with_kwargs=True) for l, layer in enumerate(dec)]
    handles += [layer.mlp.register_forward_hook(ffn(j, layer.mlp)) for j, layer in enumerate(dec)]
    try:
        if stack is not None:
            gens = s.start(stack, {}).generate(images, questions, max_new_tokens=T, min_new_tokens=T,
                                               output_logits=True)
            return [g.token_ids for g in gens], [g.logits for g in gens]
        with torch.inference_mode():
            out = s.model.generate(**inputs, max_new_tokens=T, min_new_tokens=T, do_sample=False,
                                   return_dict_in_generate=True, output_logits=True)
    finally:
        for h in handles:
            h.remove()
    return s.adapter.new_tokens(out.sequences, inputs), torch.stack(out.logits, 1)


SETTINGS = {  # (overrides, eager start, end, gamma, alpha)
    "always": (["retracing_ratio=0.5", "starting_layer=-1", "ending_layer=3"], -1, 3, 0.75, 0.5),
    "mixed": (["retracing_ratio=0.6", "starting_layer=-1", "ending_layer=3", "entropy_threshold=0.9994"],
              -1, 3, 0.9994, 0.6),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_equals_eager_reference(family, batch, setting):
    s = tiny_session(family)
    overrides, start, end, gamma, alpha = SETTINGS[setting]
    images = tiny_images(batch, mixed=batch > 1)
    questions = [QUESTIONS[i % 4] for i in range(batch)]
    ref_tokens, ref_logits = _eager(s, images, questions, start, end, gamma, alpha)
    gens = s.start(["memvr"], {"memvr": overrides}).generate(images, questions, max_new_tokens=T, min_new_tokens=T,
                                                             output_logits=True)
    base = s.start([], {}).generate(images, questions, max_new_tokens=T, min_new_tokens=T, output_logits=True)
    for i, g in enumerate(gens):
        assert torch.equal(g.token_ids, ref_tokens[i][: len(g.token_ids)])
        torch.testing.assert_close(g.logits, ref_logits[i][: len(g.token_ids)], atol=1e-5, rtol=0)
        assert sum(g.diagnostics["memvr"]["retraced_at"].values()) <= T
    assert any(not torch.equal(g.logits, b.logits) for g, b in zip(gens, base)), "MemVR changed nothing"


def test_strength_zero_is_baseline():
    s = tiny_session("qwen2-vl")
    images, questions = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    base = s.start([], {}).generate(images, questions, max_new_tokens=T, min_new_tokens=T, output_logits=True)
    run = s.start(["memvr"], {"memvr": ["retracing_ratio=0"]})
    assert run.declarations().get("memvr", []) == []
    off = run.generate(images, questions, max_new_tokens=T, min_new_tokens=T, output_logits=True)
    for b, o in zip(base, off):
        assert torch.equal(b.token_ids, o.token_ids) and torch.equal(b.logits, o.logits)


def test_no_trigger_is_baseline_and_lens_is_lazy():
    """gamma above every entropy: nothing retraces (logits bitwise the baseline); once every row has retraced in a
    forward, later layers' lens is never projected (lm_head runs once per trigger layer asked, not per layer)."""
    s = tiny_session("llava")
    images, questions = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    kw = dict(max_new_tokens=T, min_new_tokens=T, output_logits=True)
    base = s.start([], {}).generate(images, questions, **kw)
    never = s.start(["memvr"], {"memvr": ["entropy_threshold=1.01"]}).generate(images, questions, **kw)
    for b, o in zip(base, never):
        assert torch.equal(b.logits, o.logits)
    calls = []
    h = s.model.get_output_embeddings().register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        s.start(["memvr"], {"memvr": SETTINGS["always"][0]}).generate(images, questions, **kw)
    finally:
        h.remove()
    # per forward: the model's own head once + the lens of the first retrace layer only (gamma 0.75 always fires)
    assert len(calls) == 2 * T


def test_lens_only_on_rows_still_open():
    """After some rows triggered in a forward, the next trigger layer projects only the others (the eager reference
    test above checks the values in this setting)."""
    s = tiny_session("qwen2-vl")
    images, questions = tiny_images(3, mixed=True), [QUESTIONS[i % 4] for i in range(3)]
    calls = []
    h = s.model.get_output_embeddings().register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        s.start(["memvr"], {"memvr": SETTINGS["mixed"][0]}).generate(images, questions, max_new_tokens=T,
                                                                       min_new_tokens=T)
    finally:
        h.remove()
    assert max(calls) == 3 and min(calls) < 3


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_stacks_with_clva(family):
    """``clva,memvr`` equals CLVA through hallufix with the eager MemVR hooks on the model, and differs from each."""
    s = tiny_session(family)
    images, questions = tiny_images(2, mixed=True), list(QUESTIONS[:2])
    overrides, start, end, gamma, alpha = SETTINGS["mixed"]
    kw = dict(max_new_tokens=T, min_new_tokens=T, output_logits=True)
    ref_tokens, ref_logits = _eager(s, images, questions, start, end, gamma, alpha, stack=["clva"])
    both = s.start(["clva", "memvr"], {"memvr": overrides}).generate(images, questions, **kw)
    clva = s.start(["clva"], {}).generate(images, questions, **kw)
    for i, (x, c) in enumerate(zip(both, clva)):
        assert torch.equal(x.token_ids, ref_tokens[i])
        torch.testing.assert_close(x.logits, ref_logits[i], atol=1e-5, rtol=0)
    assert any(not torch.equal(x.logits, c.logits) for x, c in zip(both, clva))


def test_layers_follow_depth():
    assert retrace_layers(Config(), 32) == list(range(7, 17))  # official 5 < l < 16, retrace at l + 1
    assert retrace_layers(Config(), 28) == list(range(6, 15))
    assert retrace_layers(Config(), 4) == [2]
    assert retrace_layers(Config(starting_layer="-1", ending_layer="3"), 4) == [1, 2, 3]


class TestMemVRContract(MethodContract):
    method = "memvr"
    noop = ["retracing_ratio=0"]
    active = ["retracing_ratio=0.5"]
