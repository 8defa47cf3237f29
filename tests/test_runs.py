"""Run directories: written as they go, resumed after an interruption with identical results; sweeps; bad input."""
from __future__ import annotations

import json

import pytest

from hallufix.runner import RunSpec, execute, read_samples
from hallufix.tasks.base import MetricInfo, Sample, Task, TaskError
from hallufix.testing.models import tiny_images, tiny_session


class YesNoTask(Task):
    """A tiny yes/no task over generated images (answers are arbitrary: the model is random)."""

    name = "test-yesno"
    max_new_tokens = 2
    metrics = (MetricInfo("accuracy", True), MetricInfo("yes_ratio", None))

    def __init__(self, n=7, missing=False, tmp=None):
        self.n, self.missing, self.tmp = n, missing, tmp

    def samples(self):
        imgs = tiny_images(self.n)
        out = []
        for i in range(self.n):
            image = imgs[i]
            if self.missing and i == 3:
                image = str(self.tmp / "no_such_image.jpg")
            out.append(Sample(id=f"q{i}", question=f"is there a cat {'please ' * (i % 3)}?", image=image,
                              answer="yes" if i % 2 else "no", split="even" if i % 2 == 0 else "odd"))
        return out

    def parse(self, sample, text):
        return "yes" if "yes" in text.lower() else "no"

    def score(self, records):
        out = {}
        for split in sorted({r["split"] for r in records}) + ["all"]:
            rs = [r for r in records if split == "all" or r["split"] == split]
            out[split] = {"accuracy": sum(r["parsed"] == r["answer"] for r in rs) / len(rs),
                          "yes_ratio": sum(r["parsed"] == "yes" for r in rs) / len(rs)}
        return out


def test_interrupted_run_resumes_to_identical_results(tmp_path):
    s = tiny_session("llava")
    spec = RunSpec(model="tiny", task="test-yesno", batch_size=2, plugins=["visual-boost"],
                   overrides={"visual-boost": ["w=2"]})
    full = execute(s, YesNoTask(), spec, tmp_path / "full", progress=False)

    class Stop(Exception):
        pass

    def stop_after_two_batches(done, total):
        if done >= 4:
            raise Stop()

    with pytest.raises(Stop):
        execute(s, YesNoTask(), spec, tmp_path / "cut", progress=False, on_batch=stop_after_two_batches)
    assert len(read_samples(tmp_path / "cut" / "samples.jsonl")) == 4
    assert not (tmp_path / "cut" / "results.json").exists()
    # a torn last line from a kill mid-write is dropped and redone
    with (tmp_path / "cut" / "samples.jsonl").open("a") as f:
        f.write('{"id": "q4", "spl')
    resumed = execute(s, YesNoTask(), spec, tmp_path / "cut", progress=False)
    assert resumed["metrics"] == full["metrics"]
    # timing and hook counts add up over both processes (4 samples before the cut, 3 after)
    assert resumed["overhead"]["samples_timed"] == 7 and resumed["overhead"]["processes"] == 2
    fired_cut = json.loads((tmp_path / "cut" / "hooks.json").read_text())["fired"]
    assert fired_cut == json.loads((tmp_path / "full" / "hooks.json").read_text())["fired"]
    a = [json.loads(x)["output"] for x in (tmp_path / "full" / "samples.jsonl").read_text().splitlines()]
    b = [json.loads(x)["output"] for x in (tmp_path / "cut" / "samples.jsonl").read_text().splitlines()]
    assert a == b
    saved = json.loads((tmp_path / "full" / "results.json").read_text())
    assert saved["schema_version"] == 2 and saved["methods"][0]["name"] == "visual-boost"
    assert saved["methods"][0]["config"]["w"] == 2.0
    assert saved["metrics"]["all"]["yes_ratio"]["higher_is_better"] is None
    env = json.loads((tmp_path / "full" / "env.json").read_text())
    assert env["attn_implementation"] == "sdpa" and env["batch_size"] == 2 and "torch" in env
    hooks = json.loads((tmp_path / "full" / "hooks.json").read_text())
    assert hooks["declared"]["visual-boost"] and hooks["fired"]


def test_missing_image_is_refused_before_any_work(tmp_path):
    s = tiny_session("llava")
    spec = RunSpec(batch_size=2)
    with pytest.raises(TaskError, match=r"no_such_image.jpg \(sample q3\)"):
        execute(s, YesNoTask(missing=True, tmp=tmp_path), spec, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing ran: no empty run directory is left


def test_corrupt_image_names_sample_and_path_and_keeps_finished_work(tmp_path):
    s = tiny_session("llava")
    (tmp_path / "no_such_image.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(TaskError, match=r"cannot read image .*no_such_image.jpg \(sample q3\)") as info:
        execute(s, YesNoTask(missing=True, tmp=tmp_path), RunSpec(batch_size=2), tmp_path / "run", progress=False)
    assert len(read_samples(tmp_path / "run" / "samples.jsonl")) == 2
    from hallufix.errors import progress_hint

    assert "2 of 7 samples are finished" in progress_hint(info.value)


def test_empty_task_and_changed_config_are_refused(tmp_path):
    s = tiny_session("llava")
    with pytest.raises(TaskError, match="no samples"):
        execute(s, YesNoTask(n=0), RunSpec(), tmp_path / "empty", progress=False)
    execute(s, YesNoTask(n=2), RunSpec(batch_size=2), tmp_path / "r", progress=False)
    from hallufix.errors import RunDirError

    with pytest.raises(RunDirError, match="different run .*seed: 0 -> 1"):
        execute(s, YesNoTask(n=2), RunSpec(batch_size=2, seed=1), tmp_path / "r", progress=False)
    # batch size and limit do not change a sample (batched == one at a time): a resume with another batch size
    # reuses every finished sample
    res = execute(s, YesNoTask(n=2), RunSpec(batch_size=1), tmp_path / "r", progress=False)
    assert res["task"]["n"] == 2
