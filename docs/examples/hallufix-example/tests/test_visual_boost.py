"""The example plugin inherits hallufix's method contract suite, plus one behavioural check."""
import torch

from hallufix.testing import MethodContract
from hallufix.testing.models import tiny_images, tiny_session


class TestVisualBoostContract(MethodContract):
    method = "visual-boost"
    noop = ["w=1.0"]
    active = ["w=3.0"]


def test_boost_raises_visual_attention():
    session = tiny_session("llava")
    from hallufix import points
    from hallufix.testing import HookRecorder

    masses = {}
    for w in (1.0, 3.0):
        rec = HookRecorder(points.attn_probs([1], rows="last", phases={"prefill"}), keep=True)
        run = session.start(["visual-boost", rec], {"visual-boost": [f"w={w}", "layers=1"]})
        run.generate(tiny_images(1), ["is there a cat ?"], max_new_tokens=1)
        probs = rec.values[0][0, :, -1]  # (H, kv)
        vis = (session.model.config.image_token_id == run.session.processor(
            images=tiny_images(1), text=[session.adapter.prompt(session.processor, "is there a cat ?")],
            return_tensors="pt")["input_ids"][0])
        masses[w] = float(probs[:, vis].sum(-1).mean())
    assert masses[3.0] > masses[1.0]


def test_diagnostics_come_back_under_the_method_name():
    session = tiny_session("llava")
    run = session.start(["visual-boost"], {"visual-boost": ["w=3.0", "layers=1,2"]})
    outs = run.generate(tiny_images(2), ["is there a cat ?", "is there a dog ?"], max_new_tokens=2,
                       min_new_tokens=2)
    for out in outs:
        diag = out.diagnostics["visual-boost"]
        assert diag["layers"] == [1, 2] and diag["visual_tokens"] > 0
        assert diag["bias_calls"] == 4  # two layers x (prefill + one decode step)
