"""``--model hallufix``'s ``--model_args`` and a task's ``generation_kwargs``, as lmms-eval hands them over (its
parser keeps quotes and turns numbers and true/false into Python values): parsed, or refused naming the fix.
Pure Python: runs without lmms-eval."""
from __future__ import annotations

from pathlib import Path

import pytest

from hallufix.integrations.lmms_eval.args import ModelArgsError, parse_model_args, parse_overrides
from hallufix.integrations.lmms_eval.gen import DEFAULT_MAX_NEW_TOKENS, GenerationRefused, cut_at_stops, \
    greedy_settings


def test_defaults_are_the_builtin_baseline_on_cpu_one_request_per_batch():
    args = parse_model_args({"batch_size": None, "max_batch_size": None, "device": None}, argv=[])
    assert (args.pretrained, args.plugins, args.overrides, args.dtype, args.device, args.batch_size) == \
        ("builtin", "", {}, "auto", "cpu", 1)
    assert args.record is None and args.record_root is None


def test_quotes_lmms_eval_keeps_are_removed():
    args = parse_model_args({"pretrained": "'llava-1.5'", "plugins": '"clva,fhi"', "dtype": '"bfloat16"',
                             "device": "cuda:1", "batch_size": 8}, argv=[])
    assert (args.pretrained, args.plugins, args.dtype, args.device, args.batch_size) == \
        ("llava-1.5", "clva,fhi", "bfloat16", "cuda:1", 8)


@pytest.mark.parametrize("text,expected", [
    ("{clva: {alpha: 10, beta: 0.5}}", {"clva": ["alpha=10", "beta=0.5"]}),
    ('{"clva": ["alpha=10"], "fhi": ["g_perc=1.2"]}', {"clva": ["alpha=10"], "fhi": ["g_perc=1.2"]}),
    ("{clva: [alpha=10, tau=2]}", {"clva": ["alpha=10", "tau=2"]}),
    ("{clva: alpha=10}", {"clva": ["alpha=10"]}),
    ("{fhi: {fold: true, tau_perc_decode: null, layers: [2, 3]}}",
     {"fhi": ["fold=true", "tau_perc_decode=null", "layers=[2, 3]"]}),
    ("'{clva: {alpha: 1}}'", {"clva": ["alpha=1"]}),
    ("", {}),
    ("{}", {}),
])
def test_override_forms(text, expected):
    assert parse_overrides(text) == expected


def test_overrides_as_a_dict_from_simple_evaluate():
    assert parse_overrides({"clva": {"alpha": 3}, "fhi": ["g_reas=1.1"]}) == {"clva": ["alpha=3"],
                                                                            "fhi": ["g_reas=1.1"]}


@pytest.mark.parametrize("value,match", [
    ("[alpha=10]", "must map method names"),
    ("{clva: [alpha]}", "neither a mapping"),
    ("{clva: [alpha=10}", "is not a mapping"),
    ("{clva: alpha}", "'alpha' is not 'key=value'"),
])
def test_bad_overrides_are_refused_with_an_example(value, match):
    with pytest.raises(ModelArgsError, match=match):
        parse_overrides(value)


@pytest.mark.parametrize("kwargs,match", [
    ({"pretrainde": "builtin"}, "does not take pretrainde; its --model_args are pretrained, plugins"),
    ({"batch_size": "auto"}, "no automatic batch size"),
    ({"batch_size": 0}, "at least 1"),
    ({"dtype": "fp8"}, "dtype='fp8': choose one of auto, float32"),
])
def test_bad_model_args_are_refused(kwargs, match):
    with pytest.raises(ModelArgsError, match=match):
        parse_model_args(kwargs, argv=[])


def test_record_folder_explicit_or_under_lmms_eval_output_path():
    assert parse_model_args({"record": "'runs/x'"}, argv=["--output_path", "out"]).record == Path("runs/x")
    for argv in (["--tasks", "pope", "--output_path", "out/lmms"], ["--output_path=out/lmms"]):
        args = parse_model_args({}, argv=argv)
        assert args.record is None and args.record_root == Path("out/lmms/hallufix")


def test_greedy_task_settings_pass_and_record_what_had_no_effect():
    g = greedy_settings({"max_new_tokens": 128, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False,
                         "until": "\n\n", "image_aspect_ratio": "original"})
    assert (g.max_new_tokens, g.min_new_tokens, g.until) == (128, 0, ("\n\n",))
    assert g.ignored == ("image_aspect_ratio", "top_p")
    assert g.record()["decoding"] == "greedy" and g.record()["until"] == ["\n\n"]
    assert greedy_settings({}).max_new_tokens == DEFAULT_MAX_NEW_TOKENS == 1024
    assert greedy_settings({"temperature": 0.0, "do_sample": "false", "num_beams": 1.0}).until == ()


@pytest.mark.parametrize("kwargs,named", [
    ({"temperature": 0.2}, "temperature=0.2 (lmms-eval samples when temperature > 0)"),
    ({"do_sample": True, "temperature": 0}, "do_sample=True"),
    ({"num_beams": 5}, "num_beams=5"),
    ({"repetition_penalty": 1.05}, "repetition_penalty=1.05"),
    ({"no_repeat_ngram_size": 3}, "no_repeat_ngram_size=3"),
    ({"min_length": 5}, "min_length=5 (use min_new_tokens)"),
])
def test_decoding_it_cannot_honour_is_refused(kwargs, named):
    with pytest.raises(GenerationRefused, match=r"task 'pope': hallufix generates greedily with one beam and "
                                                r"cannot honour .*" + named.replace("(", r"\(").replace(")", r"\)")):
        greedy_settings(kwargs, task="pope")


def test_several_refusals_are_named_together_with_the_fix():
    with pytest.raises(GenerationRefused) as err:
        greedy_settings({"temperature": 1.0, "num_beams": 4})
    assert "temperature=1.0" in str(err.value) and "num_beams=4" in str(err.value)
    assert "--gen_kwargs temperature=0,do_sample=false,num_beams=1" in str(err.value)


@pytest.mark.parametrize("kwargs,match", [({"max_new_tokens": 0}, "at least 1"),
                                          ({"temperature": "hot"}, "not a number"),
                                          ({"until": [1]}, "list of strings")])
def test_malformed_settings_are_refused(kwargs, match):
    with pytest.raises(GenerationRefused, match=match):
        greedy_settings(kwargs)


def test_cut_at_the_earliest_stop_string():
    assert cut_at_stops("a red star.\nUSER: next", ("USER:", "\n")) == "a red star."
    assert cut_at_stops("yes", ("\n\n",)) == "yes"
    assert cut_at_stops("yes", ()) == "yes"
    assert cut_at_stops("\nyes", ("\n",)) == ""
