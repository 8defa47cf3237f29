"""Run identity (issue 20): a run resumes only into a directory holding the same run; directory names are unique
and readable; results.json carries lmms-eval-level provenance."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from hallufix.errors import RunDirError
from hallufix.experiment import cell_dirname, plan
from hallufix.runs import RunSpec, execute
from hallufix.tasks.base import MetricInfo, Sample, Task
from hallufix.testing.models import tiny_images, tiny_session


class PromptTask(Task):
    name = "test-prompt"
    max_new_tokens = 2
    metrics = (MetricInfo("accuracy", True), MetricInfo("fp", None))

    def __init__(self, prompt="vcd", n=4):
        self.prompt, self.n = prompt, n

    def samples(self):
        suffix = " Please answer yes or no." if self.prompt == "vcd" else ""
        return [Sample(id=f"q{i}", question=f"is there a cat?{suffix}", image=im, answer="yes" if i % 2 else "no")
                for i, im in enumerate(tiny_images(self.n))]

    def parse(self, sample, text):
        return "yes" if "yes" in text.lower() else "no"

    def score(self, records):
        acc = sum(r["parsed"] == r["answer"] for r in records) / len(records)
        return {"all": {"accuracy": acc, "fp": sum(r["parsed"] == "yes" != r["answer"] for r in records),
                        "undeclared_thing": 1.0}}


@pytest.fixture(scope="module")
def session():
    return tiny_session("llava")


def test_changed_task_option_is_refused_naming_the_key(session, tmp_path):
    execute(session, PromptTask("vcd"), RunSpec(task_options={"prompt": "vcd"}), tmp_path / "r", progress=False)
    with pytest.raises(RunDirError, match=r"task_options: .*vcd.* -> .*none"):
        execute(session, PromptTask("none"), RunSpec(task_options={"prompt": "none"}), tmp_path / "r",
                progress=False)


def test_changed_question_under_same_ids_is_refused(session, tmp_path):
    """Even when the options are not recorded (Python API), a sample is reused only for the same question."""
    execute(session, PromptTask("vcd"), RunSpec(), tmp_path / "r", progress=False)
    with pytest.raises(RunDirError, match=r"another question .*q0"):
        execute(session, PromptTask("none"), RunSpec(), tmp_path / "r", progress=False)


def test_provenance_seeds_and_directions(session, tmp_path):
    random.seed(123)
    np.random.seed(123)
    res = execute(session, PromptTask(), RunSpec(seed=3, limit=2, task_options={"prompt": "vcd"}), tmp_path / "r",
                  progress=False)
    prov = res["provenance"]
    assert prov["seeds"] == {"python": 3, "numpy": 3, "torch": 3}
    # python's global RNG is reseeded by a run:
    random.seed(3)
    expected = random.random()
    execute(session, PromptTask(), RunSpec(seed=3, limit=2, task_options={"prompt": "vcd"}), tmp_path / "r2",
            progress=False)
    assert random.random() == expected
    assert prov["limit_warning"] and "--limit 2" in prov["limit_warning"]
    assert prov["generation"] == {"do_sample": False, "num_beams": 1, "max_new_tokens": 2, "min_new_tokens": 0,
                                  "decoding": "greedy"}
    assert prov["task_options"] == {"prompt": "vcd"} and len(prov["prompt_template_sha256"]) == 64
    assert "{question}" in prov["prompt_rendered"]
    assert prov["started"] <= prov["finished"] and prov["command_line"]
    assert res["identity"]["model"]["family"] == "llava" and res["identity_hash"]
    # counts and undeclared metrics have no direction (never a guessed "higher is better")
    assert res["metrics"]["all"]["fp"]["higher_is_better"] is None
    assert res["metrics"]["all"]["undeclared_thing"]["higher_is_better"] is None
    assert res["metrics"]["all"]["undeclared_thing"]["undeclared"] is True
    assert res["overhead"]["wall_s_per_token"] > 0 and res["overhead"]["peak_mem_mb"] > 0


def test_task_seed_sweep_gives_two_cells_each_with_its_own_options():
    p = plan({"model": "builtin", "task": "shapes-pope"}, ["task.seed=0,1"])
    assert [c.task_options for c in p.cells] == [{"seed": 0}, {"seed": 1}]
    names = [cell_dirname(c) for c in p.cells]
    assert names == ["baseline_task.seed=0", "baseline_task.seed=1"]


def test_fixed_overrides_never_collide_and_file_plugins_are_not_hidden():
    a = plan({"model": "builtin"}, ["clva.alpha=10"], "clva").cells[0]
    b = plan({"model": "builtin"}, ["clva.alpha=14"], "clva").cells[0]
    c = plan({"model": "builtin"}, [], "clva").cells[0]
    names = {cell_dirname(a), cell_dirname(b), cell_dirname(c)}
    assert len(names) == 3 and "clva" in names and all(n.startswith("clva") for n in names)
    assert cell_dirname(a) == cell_dirname(plan({"model": "builtin"}, ["clva.alpha=10"], "clva").cells[0])
    local = plan({"model": "builtin"}, [], "./plugins_dir/my_method.py").cells[0]
    assert cell_dirname(local) == "my_method"
    assert cell_dirname(local, {"./plugins_dir/my_method.py": "my-method"}) == "my-method"


def test_cli_limit_warns_and_task_seed_sweep_writes_two_runs(tmp_path, capsys):
    from hallufix.cli import main

    out = tmp_path / "out"
    assert main(["ablate", "--limit", "4", "--task", "shapes-pope", "task.seed=0,1", "--output", str(out),
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: --limit 4" in err
    dirs = sorted(p.name for p in out.iterdir())
    assert dirs == ["baseline_task.seed=0", "baseline_task.seed=1"]
    q = [json.loads((out / d / "samples.jsonl").read_text().splitlines()[0])["meta"]["scene"] for d in dirs]
    assert q[0] != q[1]  # seed 1 draws other scenes
