"""Strict device mode (``hallufix.intercept.strict``) catches on CPU the device mistakes that fail on a GPU, and
every built-in method (and the example plugin) runs clean under it on mixed-size and two-image batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hallufix import capture as C
from hallufix import hookimpl
from hallufix import points as P
from hallufix.intercept import strict
from hallufix.intercept.strict import DeviceMisuseError
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session


class Planted:
    """A probe + bias method with one planted device mistake (``kind``), or none (``"clean"``)."""

    name = "planted"

    def __init__(self, kind: str):
        self.kind, self.seen = kind, None

    @hookimpl
    def hallufix_configure(self, model):
        image = P.input_image() if self.kind == "capture-numpy" else []
        return image + P.attn_probs([1], rows="last", phases={"prefill"}) + P.attn_bias([2], phases={"prefill"})

    @hookimpl
    def hallufix_input_image(self, event):
        cap = event.capture(event.images, event.questions, layers=[1], hidden_norms=True)
        self.seen = cap.last_visual[1][0].numpy()  # an analysis prefill's result is on the model's device too

    @hookimpl
    def hallufix_attn_probs(self, event):
        last = event.visual_last()
        if self.kind == "numpy":
            self.seen = last.numpy()  # the ARA bug: a model-device tensor straight to NumPy
        elif self.kind == "asarray":
            self.seen = np.asarray(last)
        else:
            self.seen = last.cpu().numpy()  # explicit host copy: fine

    @hookimpl
    def hallufix_attn_bias(self, event):
        vt = event.visual
        if self.kind == "host-scatter":
            # the other ARA bug: a bias built in host memory, scattered with the device index
            values = torch.tensor(np.zeros((vt.batch_size, vt.n_max)), dtype=torch.float32)
            event.add(C.scatter_visual(values, vt, event.kv_len))
        elif self.kind == "factory":
            event.add(torch.where(event.visual_keys & torch.ones(event.visual_keys.shape, dtype=torch.bool),
                                  0.5, 0.0))
        else:
            values = torch.as_tensor(np.zeros((vt.batch_size, vt.n_max)), dtype=torch.float32, device=event.device)
            event.add(C.scatter_visual(values, vt, event.kv_len))


def _gen(session, plugins, overrides=None, images=None, n=4):
    images = images or tiny_images(n, mixed=True)
    return session.start(plugins, overrides or {}).generate(images, list(QUESTIONS[:len(images)]), max_new_tokens=2,
                                                            output_logits=True)


@pytest.mark.parametrize("kind", ["numpy", "asarray", "host-scatter", "factory", "capture-numpy"])
def test_planted_device_mistakes_are_caught(kind):
    s = tiny_session("qwen2.5-vl")
    _gen(s, [Planted(kind)])  # without strict mode the mistake passes unnoticed on a CPU machine
    with strict.enforce(), pytest.raises(DeviceMisuseError, match="on a GPU this raises"):
        _gen(s, [Planted(kind)])


def test_clean_plugin_passes_and_the_environment_variable_turns_it_on(monkeypatch):
    s = tiny_session("qwen2.5-vl")
    with strict.enforce():
        _gen(s, [Planted("clean")])
    monkeypatch.setenv(strict.ENV, "1")
    with pytest.raises(DeviceMisuseError):
        _gen(s, [Planted("numpy")])
    monkeypatch.setenv(strict.ENV, "0")
    _gen(s, [Planted("numpy")])


CLVA = ["tau=1.0", "lambda_vis=0.5", "pos_layer=1"]
ARA = ["band=2-5", "sink_ratio=1.5", "head_ratio=0.3", "dilation=0", "coverage=0.4", "guard_min_sharpness=0",
       "guard_max_area=1.0"]
CONTRAST = ["fusion_layers=1-3", "post_layer=5", "review_layer=6", "quantile=0.25"]
FHI = ["perc_max_layer=5", "reas_min_layer=2", "tau_perc=0.05", "tau_reas=0.01", "g_perc=1.5", "g_reas=1.8"]
CASES = {
    "clva": (["clva"], {"clva": CLVA}),
    "clva-prefill": (["clva"], {"clva": CLVA + ["anchors=prefill"]}),
    "ara": (["ara"], {"ara": ARA}),
    "ara-both": (["ara"], {"ara": ARA + ["mode=both"]}),
    "ara-logit-bias": (["ara"], {"ara": ARA + ["mode=logit-bias", "dim_floor=0"]}),
    "ara-generic": (["ara"], {"ara": ARA + ["generic_test=true"]}),
    "contrast-attn": (["contrast"], {"contrast": CONTRAST + ["mode=attn"]}),
    "contrast-kv": (["contrast"], {"contrast": CONTRAST + ["mode=kv"]}),
    "contrast-residual": (["contrast"], {"contrast": CONTRAST + ["mode=residual"]}),
    "contrast-crop": (["contrast"], {"contrast": CONTRAST + ["variant=crop"]}),
    "fhi": (["fhi"], {"fhi": FHI}),
    "fhi-fold": (["fhi"], {"fhi": FHI + ["query_row=prompt_last", "fold=true"]}),
    "fhi-mean": (["fhi"], {"fhi": FHI + ["query_row=mean"]}),
    "visual-boost": (["visual-boost"], {"visual-boost": ["w=3"]}),
    "stack": (["contrast", "clva", "ara", "fhi"], {"contrast": CONTRAST + ["variant=crop"], "clva": CLVA,
                                                  "ara": ARA + ["mode=logit-bias"], "fhi": FHI}),
}


@pytest.mark.parametrize("family", ["qwen2.5-vl", "llava", "instructblip"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_builtin_method_runs_clean_under_strict_mode(family, case):
    plugins, overrides = CASES[case]
    if family == "instructblip" and case in ("ara-both", "contrast-crop", "stack"):
        pytest.skip("InstructBLIP takes one image per prompt / has no token grid")
    s = tiny_session(family, num_layers=8)
    with strict.enforce():
        outs = _gen(s, plugins, overrides)
    assert all(torch.isfinite(o.logits).all() for o in outs)


def test_host_copies_stay_host_through_dtype_changes_and_moves_make_device_tensors():
    with strict.StrictDevices():
        dev = torch.ones(3, device="cpu")  # made with device=: a device tensor
        host = dev.cpu()
        assert host is not dev and strict.is_host(host) and not strict.is_host(dev)
        host.to(torch.float64).numpy()  # a dtype change stays on the host
        (host.double() * 2).numpy()  # host-only arithmetic stays on the host
        with pytest.raises(DeviceMisuseError):
            dev.numpy()
        with pytest.raises(DeviceMisuseError):
            dev + host
        moved = host.to(dev.device)
        assert not strict.is_host(moved)
        _ = dev + moved + torch.tensor(2.0)  # 0-dim host tensors mix, as on CUDA
        _ = dev[torch.tensor([0, 2])]  # host index tensors index device tensors, as on CUDA


class HandBacks:
    """Hands back float32 tensors to a bfloat16 model through every setter, and checks what the event keeps."""

    name = "hand-backs"

    def __init__(self, bad: str | None = None):
        self.bad, self.kept = bad, {}

    @hookimpl
    def hallufix_configure(self, model):
        return (P.layer_input([0], phases={"prefill"}) + P.attn_kv([1]) + P.attn_bias([1])
                + P.attn_probs([2], rows="last", edits=True) + P.attn_heads([3]) + P.logits())

    @hookimpl
    def hallufix_layer_input(self, event):
        event.hidden = event.hidden.float() if self.bad != "hidden" else event.hidden[:, :1].float()
        self.kept["hidden"] = event.hidden.dtype

    @hookimpl
    def hallufix_attn_kv(self, event):
        event.key, event.value = event.key.float(), event.value.float()
        self.kept["kv"] = (event.key.dtype, event.value.dtype)

    @hookimpl
    def hallufix_attn_bias(self, event):
        bias = torch.zeros(event.layout.batch_size, 1, event.kv_len, dtype=torch.float64, device=event.device)
        event.add(bias if self.bad != "bias" else bias[..., :-1])
        self.kept["bias"] = event.terms[-1][0].dtype

    @hookimpl
    def hallufix_attn_probs(self, event):
        self.kept["probs_in"] = event.probs.dtype
        event.probs = event.probs.double()
        self.kept["probs"] = event.probs.dtype

    @hookimpl
    def hallufix_attn_heads(self, event):
        H = event.model.num_heads
        event.scale(torch.ones(H, dtype=torch.float64, device=event.device) if self.bad != "gains" else
                    torch.ones(H + 1, device=event.device))
        self.kept["heads"] = event.output.dtype

    @hookimpl
    def hallufix_logits(self, event):
        event.scores = event.scores.double()
        self.kept["logits"] = event.scores.dtype


def test_hand_backs_are_converted_to_the_model_dtype_and_bad_shapes_are_named():
    s = tiny_session("qwen2.5-vl", dtype="bfloat16")
    hb = HandBacks()
    with strict.enforce():
        outs = _gen(s, [hb])
    assert all(torch.isfinite(o.logits).all() for o in outs)
    bf = torch.bfloat16
    assert hb.kept["hidden"] == bf and hb.kept["kv"] == (bf, bf) and hb.kept["bias"] == bf
    assert hb.kept["probs_in"] == torch.float32 and hb.kept["probs"] == torch.float32  # probe rows stay float32
    assert hb.kept["heads"] == bf and hb.kept["logits"] == outs[0].logits.dtype
    for bad, match in (("hidden", "hidden must keep shape"), ("bias", "bias must be"), ("gains", "gains must be")):
        with pytest.raises(ValueError, match=match):
            _gen(s, [HandBacks(bad)])
