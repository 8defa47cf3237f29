"""The plugin API as a plugin author sees it: one vocabulary of point names (old names still accepted, with a
warning), the per-batch hook order, diagnostics returned from batch_end, and registered analyses."""
from __future__ import annotations

import warnings

import pytest

from hallufix import hookimpl
from hallufix import points as P
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session


def test_point_names_are_hook_names():
    (bias,) = P.attn_bias([3])
    assert (bias.kind, bias.name, bias.hook) == ("attn_bias", "attn_bias.3", "hallufix_attn_bias")
    assert [p.name for p in P.logits() + P.input_image()] == ["logits", "input_image"]
    assert P.parse_name("attn_probs.12") == ("attn_probs", 12) and P.parse_name("logits") == ("logits", None)
    import hallufix.hookspecs as hs

    for kind in P.KINDS:  # every kind has its hookspec
        assert hasattr(hs, P.hook_name(kind)), kind
    assert P.select("*.1", 3) == ["layer_input.1", "attn_kv.1", "attn_bias.1", "attn_probs.1", "attn_heads.1",
                                  "mlp_in.1", "mlp_out.1", "logit_lens.1", "attn_transform.1"]


@pytest.mark.parametrize("old, new", [("bias", "attn_bias"), ("probs", "attn_probs"), ("heads", "attn_heads"),
                                      ("kv", "attn_kv"), ("in", "layer_input")])
def test_old_kinds_are_deprecated_aliases(old, new):
    with pytest.warns(DeprecationWarning, match=new):
        point = P.HookPoint(old, 2)
    assert point == P.HookPoint(new, 2) and point.name == f"{new}.2"


def test_old_names_and_selectors_are_deprecated_aliases():
    with pytest.warns(DeprecationWarning, match="attn_bias.4"):
        assert P.parse_name("lm.layers.4.attn.scores") == ("attn_bias", 4)
    with pytest.warns(DeprecationWarning):
        assert P.parse_name("lm.logits") == ("logits", None)
    with pytest.warns(DeprecationWarning):
        assert P.select("lm.layers.*.attn.scores", 3) == ["attn_bias.0", "attn_bias.1", "attn_bias.2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.select("attn_bias.*", 3)  # the current names warn about nothing
    with pytest.raises(ValueError, match="attn_bias.3"):
        P.parse_name("lm.layers.x.attn")


class OrderSpy:
    """Records the order of its per-batch hooks and hands state from the image hook to batch_end."""

    name = "order-spy"

    def __init__(self):
        self.log = []

    @hookimpl
    def hallufix_configure(self, model):
        return P.input_image() + P.logits()

    @hookimpl
    def hallufix_batch_start(self, batch):
        self.log.append(("batch_start", batch.layout is None, batch.batch_size))
        self.sizes = None

    @hookimpl
    def hallufix_input_image(self, event):
        self.log.append(("input_image",))
        self.sizes = [im.size for im in event.images]

    @hookimpl
    def hallufix_logits(self, event):
        if not self.log or self.log[-1] != ("logits",):
            self.log.append(("logits",))

    @hookimpl
    def hallufix_batch_end(self, batch):
        self.log.append(("batch_end", batch.layout is not None))
        return [{"size": list(s)} for s in self.sizes]


def test_batch_start_runs_before_the_image_hook_and_state_reaches_batch_end():
    s = tiny_session("llava")
    spy = OrderSpy()
    images = tiny_images(2, mixed=True)
    outs = s.start([spy]).generate(images, QUESTIONS[:2], max_new_tokens=2)
    assert spy.log == [("batch_start", True, 2), ("input_image",), ("logits",), ("batch_end", True)]
    assert [o.diagnostics["order-spy"] for o in outs] == [{"size": list(im.size)} for im in images]


class Diag:
    name = "diag"

    def __init__(self, result):
        self.result = result

    @hookimpl
    def hallufix_configure(self, model):
        return P.logits()

    @hookimpl
    def hallufix_logits(self, event):
        pass

    @hookimpl
    def hallufix_batch_end(self, batch):
        return self.result


def test_batch_end_diagnostics_are_filed_under_the_method_name():
    s = tiny_session("llava")
    outs = s.start([Diag([{"a": 1}, None])]).generate(tiny_images(2), QUESTIONS[:2], max_new_tokens=1)
    assert outs[0].diagnostics == {"diag": {"a": 1}} and outs[1].diagnostics == {}
    outs = s.start([Diag(None)]).generate(tiny_images(2), QUESTIONS[:2], max_new_tokens=1)
    assert all(o.diagnostics == {} for o in outs)


def test_batch_end_with_the_wrong_row_count_is_named_and_keeps_the_outputs():
    from hallufix.errors import BatchEndFailed

    s = tiny_session("llava")
    with pytest.raises(BatchEndFailed, match="method 'diag'.*one diagnostics entry per batch row \\(2\\)") as info:
        s.start([Diag([{"a": 1}])]).generate(tiny_images(2), QUESTIONS[:2], max_new_tokens=1)
    assert len(info.value.generations) == 2


def test_builtin_analyses_are_registered_by_their_plugins():
    from hallufix.analysis import registered

    found = registered()
    assert found["clva-drift"].kind == "inspect" and found["clva-drift"].dist == "hallufix"
    assert found["layer-masking"].kind == "task"
    assert found["clva-drift"].load().__module__ == "hallufix_clva.analysis"


def test_an_unknown_task_analysis_names_the_registered_ones():
    from hallufix.analysis import run_task_analysis

    with pytest.raises(ValueError, match="layer-masking"):
        run_task_analysis("layer-masks", None, "shapes-pope", None)


def test_clva_drift_uses_clvas_own_anchor_layers(tmp_path):
    from hallufix.inspect_report import write_inspection
    from hallufix_clva.method import Config, resolve_layers

    s = tiny_session("llava", num_layers=8)
    write_inspection(s, tiny_images(1), ["is there a cat ?"], tmp_path, lambda_vis=0.5)
    neg, pos, _ = resolve_layers(Config(), 8)
    text = (tmp_path / "index.md").read_text()
    assert f"positive anchor (layer {pos}" in text and f"negative anchor (layer {neg}" in text
    rows = (tmp_path / "drift.csv").read_text().splitlines()
    assert rows[0] == "layer,corr_negative_anchor,corr_positive_anchor" and len(rows) == 9
    import json

    assert json.loads((tmp_path / "maps_sensitive.json").read_text())["lambda_vis"] == 0.5  # the option arrives
    assert all(-1.0 - 1e-9 <= float(v) <= 1.0 + 1e-9 for r in rows[1:] for v in r.split(",")[1:])
