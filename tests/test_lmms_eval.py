"""hallufix inside lmms-eval: lmms-eval's own evaluator (``simple_evaluate``) runs ``--model hallufix`` on the
built-in model and a local task over the built-in shapes questions, and its answers equal ``hallufix run``'s on the
same rows — baseline, ``plugins="clva"``, and clva with an override that changes answers; hallufix's run record lies
beside it; settings the run cannot honour are refused before any work."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (scripts/test.sh installs it: see "
                                        "docs/lmms-eval.md for the CPU install)")

from hallufix.builtin import builtin_model_available  # noqa: E402
from hallufix.builtin.world import render, sample_scene  # noqa: E402

pytestmark = pytest.mark.skipif(not builtin_model_available(), reason="no shipped built-in weights")

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "tests" / "data" / "lmms_eval_task"
QUESTIONS = ROOT / "tests" / "data" / "builtin_questions.jsonl"
ROWS = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
CLVA_STRONG = "alpha=100"  # changes 4 of the 40 baseline answers on the built-in model


def _image(row):
    return render(sample_scene(random.Random(row["scene_seed"])))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Run from the checkout's root (the task YAML's data path is relative to it), datasets' cache in tmp."""
    tmp = tmp_path_factory.mktemp("lmms")
    old_cwd, old_cache = os.getcwd(), os.environ.get("HF_DATASETS_CACHE")
    os.chdir(ROOT)
    os.environ["HF_DATASETS_CACHE"] = str(tmp / "datasets")
    yield tmp
    os.chdir(old_cwd)
    if old_cache is None:
        os.environ.pop("HF_DATASETS_CACHE", None)
    else:
        os.environ["HF_DATASETS_CACHE"] = old_cache


def _hallufix_run(tmp: Path, name: str, argv: list[str]) -> dict[str, dict[int, str]]:
    """``hallufix run`` on the same 40 rows (a jsonl task of the rendered images): ``{stack: {row: output}}``."""
    from hallufix.cli import main

    data = tmp / "jsonl"
    if not data.exists():
        data.mkdir()
        lines = []
        for i, row in enumerate(ROWS):
            _image(row).save(data / f"{i}.png")
            lines.append(json.dumps({"id": str(i), "image": f"{i}.png", "question": row["question"],
                                     "answer": row["answer"]}))
        (data / "rows.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp / name
    assert main(["run", "--model", "builtin", "--task", f"jsonl:{data / 'rows.jsonl'}", "--max-new-tokens", "3",
                 "--batch-size", "7", "--output", str(out), "--quiet", *argv]) == 0
    answers: dict[str, dict[int, str]] = {}
    for samples in out.rglob("samples.jsonl"):
        config = yaml.safe_load((samples.parent / "config.yaml").read_text())
        stack = "+".join(config["plugins"]) or "baseline"
        recs = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
        answers[stack] = {int(r["id"]): r["output"] for r in recs}
    return answers


@pytest.fixture(scope="module")
def reference(workdir):
    answers = _hallufix_run(workdir, "hallufix-run", ["--plugins", "clva"])
    strong = _hallufix_run(workdir, "hallufix-run-strong", ["--plugins", "clva", "--no-baseline",
                                                            f"clva.{CLVA_STRONG}"])
    assert set(answers) == {"baseline", "clva"} and set(strong) == {"clva"}
    return {**answers, "clva-strong": strong["clva"]}


def _evaluate(workdir: Path, name: str, model_args: str, batch_size: int = 16):
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    record = workdir / name
    out = evaluator.simple_evaluate(model="hallufix", model_args=f"{model_args},record={record}",
                                    tasks=["hallufix_shapes"], batch_size=batch_size, log_samples=True,
                                    task_manager=TaskManager("WARNING", include_path=str(TASK_DIR)))
    samples = out["samples"]["hallufix_shapes"]
    answers = {s["doc_id"]: s["filtered_resps"][0] for s in samples}
    return out, answers, record


@pytest.fixture(scope="module")
def evaluated(workdir):
    return {"baseline": _evaluate(workdir, "rec-baseline", "pretrained=builtin"),
            "clva": _evaluate(workdir, "rec-clva", 'pretrained=builtin,plugins="clva"', batch_size=5),
            "clva-strong": _evaluate(workdir, "rec-strong",
                                     f'pretrained=builtin,plugins="clva",overrides={{clva: [{CLVA_STRONG}]}}')}


@pytest.mark.parametrize("stack", ["baseline", "clva", "clva-strong"])
def test_lmms_eval_answers_equal_hallufix_run(evaluated, reference, stack):
    out, answers, _ = evaluated[stack]
    assert sorted(answers) == list(range(len(ROWS)))
    assert answers == reference[stack]
    # lmms-eval scored those answers: its exact_match is the mean over the very same outputs
    expected = sum(reference[stack][i] == r["answer"] for i, r in enumerate(ROWS)) / len(ROWS)
    assert out["results"]["hallufix_shapes"]["exact_match,none"] == pytest.approx(expected)


def test_the_override_reached_the_method(evaluated, reference):
    """The strong CLVA setting changes answers against the baseline (so the equality above is not vacuous)."""
    changed = [i for i in range(len(ROWS)) if evaluated["clva-strong"][1][i] != evaluated["baseline"][1][i]]
    assert len(changed) >= 2
    assert changed == [i for i in range(len(ROWS)) if reference["clva-strong"][i] != reference["baseline"][i]]


def test_run_record_beside_lmms_eval(evaluated):
    _, answers, record = evaluated["clva-strong"]
    assert sorted(p.name for p in record.iterdir()) == ["config.yaml", "env.json", "hooks.json", "samples.jsonl"]
    recs = [json.loads(line) for line in (record / "samples.jsonl").read_text().splitlines()]
    assert [r["doc_id"] for r in recs] == list(range(len(ROWS)))
    assert {r["doc_id"]: r["output"] for r in recs} == answers
    assert all(r["id"] == f"hallufix_shapes/test/{r['doc_id']}" for r in recs)
    assert all(r["question"] == row["question"] for r, row in zip(recs, ROWS))
    assert all(set(r["diagnostics"]) == {"clva"} for r in recs)
    assert recs[0]["generation"]["max_new_tokens"] == 3 and recs[0]["generation"]["until"] == ["\n"]
    config = yaml.safe_load((record / "config.yaml").read_text())
    assert config["plugins"] == ["clva"] and config["methods"][0]["config"]["alpha"] == 100
    assert config["overrides"] == {"clva": [CLVA_STRONG]} and config["harness"] == "lmms-eval"
    env = json.loads((record / "env.json").read_text())
    assert env["lmms_eval"].startswith("0.7") and env["batch_size"] == 16
    hooks = json.loads((record / "hooks.json").read_text())
    assert hooks["declared"]["clva"] and sum(hooks["fired"].values()) > 0
    base = json.loads((evaluated["baseline"][2] / "hooks.json").read_text())
    assert base == {"declared": {}, "fired": {}, "paths": {}}


def test_a_record_with_answers_is_never_overwritten(evaluated):
    from hallufix.integrations.lmms_eval.model import HallufixLmms
    from hallufix.integrations.lmms_eval.record import RecordError

    record = evaluated["baseline"][2]
    before = (record / "samples.jsonl").read_bytes()
    with pytest.raises(RecordError, match="already holds a hallufix record with answers"):
        HallufixLmms(pretrained="builtin", record=str(record))
    assert (record / "samples.jsonl").read_bytes() == before


# ---------------------------------------------------------------------------------------------- contracts, refusals
def test_entry_point_resolves_and_names_a_light_module():
    from lmms_eval.models import get_model, get_model_manifest

    from hallufix.integrations.lmms_eval.model import HallufixLmms

    assert get_model("hallufix") is HallufixLmms and HallufixLmms.is_simple is False
    assert get_model_manifest("hallufix").chat_class_path == "hallufix.integrations.lmms_eval.model.HallufixLmms"
    code = ("import sys, hallufix.integrations.lmms_eval as m; "
            "print(sorted(k for k in ('torch', 'lmms_eval') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_documented_model_args_string_through_lmms_eval_parser():
    from lmms_eval.utils import simple_parse_args_string

    from hallufix.integrations.lmms_eval.args import parse_model_args

    raw = simple_parse_args_string('pretrained=builtin,plugins="clva,fhi",'
                                   'overrides={clva: {alpha: 10}, fhi: {layers: [2, 3]}},record=out/hf')
    args = parse_model_args({**raw, "batch_size": "8", "max_batch_size": None, "device": None}, argv=[])
    assert (args.pretrained, args.plugins, args.batch_size, args.device) == ("builtin", "clva,fhi", 8, "cpu")
    assert args.overrides == {"clva": ["alpha=10"], "fhi": ["layers=[2, 3]"]}
    assert str(args.record) == "out/hf"


@pytest.fixture(scope="module")
def model():
    from hallufix.integrations.lmms_eval.model import HallufixLmms

    m = HallufixLmms(pretrained="builtin")  # no record: none asked, no --output_path
    m.task_dict = {"t": {"test": [{"i": i} for i in range(len(ROWS))]}}
    return m


def _requests(gen_kwargs: dict, messages=None, n: int = 3):
    from lmms_eval.api.instance import Instance

    def doc_to_messages(doc):
        if messages is not None:
            return messages(doc)
        row = ROWS[doc["i"]]
        return [{"role": "user", "content": [{"type": "image", "url": _image(row)},
                                              {"type": "text", "text": row["question"]}]}]

    return [Instance(request_type="generate_until", arguments=("", doc_to_messages, dict(gen_kwargs), i, "t", "test"),
                     idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1}) for i in range(n)]


def test_until_cuts_and_max_new_tokens_is_honoured(model):
    base = model.generate_until(_requests({"max_new_tokens": 3}))
    cut = model.generate_until(_requests({"max_new_tokens": 3, "until": ["s"]}))
    assert [r.text for r in base][:2] == ["yes", "yes"]
    assert [r.text for r in cut] == [t.text.split("s")[0] for t in base]
    one = model.generate_until(_requests({"max_new_tokens": 1}))
    assert all(r.token_counts.output_tokens == 1 for r in one)


@pytest.mark.parametrize("kwargs,named", [({"temperature": 0.7}, "temperature=0.7"),
                                          ({"do_sample": True}, "do_sample=True"),
                                          ({"num_beams": 3}, "num_beams=3"),
                                          ({"repetition_penalty": 1.2}, "repetition_penalty=1.2")])
def test_settings_it_cannot_honour_are_refused_before_any_work(model, kwargs, named, monkeypatch):
    from hallufix.integrations.lmms_eval.gen import GenerationRefused

    calls = []
    monkeypatch.setattr(model.run, "generate", lambda *a, **k: calls.append(a))
    reqs = _requests({"max_new_tokens": 3}) + _requests({"max_new_tokens": 3, **kwargs})
    with pytest.raises(GenerationRefused, match=f"task 't': hallufix generates greedily .*{named}"):
        model.generate_until(reqs)
    assert calls == []  # not even the acceptable requests ran


@pytest.mark.parametrize("messages,match", [
    (lambda doc: [{"role": "user", "content": [{"type": "image", "url": _image(ROWS[0])},
                                               {"type": "image", "url": _image(ROWS[1])},
                                               {"type": "text", "text": "same ?"}]}], "holds 2"),
    (lambda doc: [{"role": "user", "content": [{"type": "text", "text": "no image ?"}]}], "holds 0"),
    (lambda doc: [{"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                  {"role": "user", "content": [{"type": "image", "url": _image(ROWS[0])},
                                               {"type": "text", "text": "q ?"}]}], "system_instruction"),
])
def test_requests_it_cannot_ask_are_refused_naming_the_document(model, messages, match):
    from hallufix.integrations.lmms_eval.messages import RequestRefused

    with pytest.raises(RequestRefused, match=f"task 't' document 0: .*{match}"):
        model.generate_until(_requests({"max_new_tokens": 3}, messages=messages))


def test_unused_request_types_say_so(model):
    with pytest.raises(NotImplementedError, match="loglikelihood .* not supported"):
        model.loglikelihood([])
    with pytest.raises(NotImplementedError, match="multi-round generation is not supported"):
        model.generate_until_multi_round([])


# ---------------------------------------------------------------------------------------------- docs/lmms-eval.md
DOC = ROOT / "docs" / "lmms-eval.md"


def _doc_commands(program: str) -> list[list[str]]:
    import re
    import shlex

    out = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
                words = words[1:]
            if words and words[0] == program:
                out.append(words)
    return out


def test_documented_cpu_install_is_what_the_test_command_installs():
    script = (ROOT / "scripts" / "test.sh").read_text()
    pips = [" ".join(c[2:]) for c in _doc_commands("pip") if "--no-deps" in c or "loguru" in c]
    assert pips == ["--no-deps lmms-eval==0.7.3",
                    "accelerate evaluate loguru sacrebleu pytz tenacity pytablewriter filelock<4"]
    assert 'pip install -q --no-deps "lmms-eval==0.7.3"' in script
    assert 'pip install -q accelerate evaluate loguru sacrebleu pytz tenacity pytablewriter "filelock<4"' in script


def test_documented_lmms_eval_commands_parse_and_the_builtin_ones_run(workdir):
    from lmms_eval.utils import simple_parse_args_string

    from hallufix.integrations.lmms_eval.args import parse_model_args

    commands = _doc_commands("lmms-eval")
    assert len(commands) >= 3
    for words in commands:
        assert words[words.index("--model") + 1] == "hallufix"
        parse_model_args(simple_parse_args_string(words[words.index("--model_args") + 1]), argv=[])
    builtin = [w for w in commands if "pretrained=builtin" in w[w.index("--model_args") + 1]]
    assert len(builtin) == 2
    exe = Path(sys.executable).with_name("lmms-eval")
    if not exe.is_file():
        pytest.skip(f"no lmms-eval command beside {sys.executable}")
    words = builtin[-1]  # the one with a method and an override: run as written, 4 rows, output in tmp
    words = [str(workdir / "doc-run") if w == "runs/lmms-eval" else w for w in words] + ["--limit", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(exe), *words[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hallufix_shapes" in done.stdout and "exact_match" in done.stdout
    records = list((workdir / "doc-run" / "hallufix").glob("clva_*/samples.jsonl"))
    assert len(records) == 1 and len(records[0].read_text().splitlines()) == 4


def test_a_method_failing_after_generation_keeps_the_batch_in_the_record(tmp_path):
    """A method whose batch_end raises (on its second batch): both generated batches are in the record, and the
    method's error reaches lmms-eval."""
    from bad_input_plugins import PLUGINS

    from hallufix.integrations.lmms_eval.model import HallufixLmms

    plugin = tmp_path / "batch_end_fails.py"
    plugin.write_text(PLUGINS["batch_end"])
    m = HallufixLmms(pretrained="builtin", plugins=f'"{plugin}"', record=str(tmp_path / "rec"), batch_size=2)
    m.task_dict = {"t": {"test": [{"i": i} for i in range(4)]}}
    with pytest.raises(Exception, match="summary failed"):
        m.generate_until(_requests({"max_new_tokens": 2}, n=4))
    recs = [json.loads(line) for line in (tmp_path / "rec" / "samples.jsonl").read_text().splitlines()]
    assert [r["doc_id"] for r in recs] == [0, 1, 2, 3]
    hooks = json.loads((tmp_path / "rec" / "hooks.json").read_text())
    assert list(hooks["declared"]) == ["batch-end-fails"] and hooks["declared"]["batch-end-fails"] and hooks["fired"]


def test_a_multi_process_launch_is_refused_before_loading(monkeypatch):
    from hallufix.integrations.lmms_eval.model import HallufixLmms

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("hallufix.api.Session.load", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(RuntimeError, match=r"one process \(WORLD_SIZE=2\): .*every process would answer every"):
        HallufixLmms(pretrained="builtin")
