"""The runner owns results: the overhead ratio is computed when a run finishes (Python API too) and survives a
rerun; timing lives outside the deterministic samples; one reader of run directories; declared directions."""
from __future__ import annotations

import json

import pytest

from hallufix.runner import RunSpec, execute, read_records, read_results, run_with_baseline
from hallufix.tasks import get_task
from hallufix.testing.models import tiny_session
from tests.test_runs import YesNoTask


@pytest.fixture(scope="module")
def session():
    return tiny_session("llava")


def spec(**kw):
    return RunSpec(model="tiny", task="test-yesno", batch_size=2, plugins=["visual-boost"],
                   overrides={"visual-boost": ["w=2"]}, **kw)


def test_python_api_gets_the_overhead_ratio_and_a_rerun_keeps_it(session, tmp_path):
    base, res = run_with_baseline(session, YesNoTask(n=5), spec(), tmp_path, progress=False)
    over = res["overhead"]
    assert over["ratio"] > 0 and over["baseline"] == "baseline" and over["paired_samples"] == 5
    assert over["ratio_iqr"][0] <= over["ratio"] <= over["ratio_iqr"][1]
    assert base["overhead"]["ratio"] is None and res["execution"]["schedule"] == "interleaved"
    assert res["execution"]["world_size"] == 1 and res["schema_version"] == 2
    (method_dir,) = [d for d in tmp_path.iterdir() if d.name != "baseline"]
    saved = (method_dir / "results.json").read_text()
    assert json.loads(saved)["overhead"] == over  # written once, by the runner, with the ratio in it
    again = run_with_baseline(session, YesNoTask(n=5), spec(), tmp_path, progress=False)[1]
    assert again["overhead"] == over and again["metrics"] == res["metrics"]
    # one cell against an already finished baseline: the same ratio, from the two timing logs
    alone = execute(session, YesNoTask(n=5), spec(), method_dir, progress=False, baseline=tmp_path / "baseline")
    assert alone["overhead"]["ratio"] == over["ratio"]


def test_timing_is_kept_out_of_the_deterministic_samples(session, tmp_path):
    a = execute(session, YesNoTask(n=4), spec(), tmp_path / "a", progress=False)
    b = execute(session, YesNoTask(n=4), spec(), tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "samples.jsonl").read_bytes() == (tmp_path / "b" / "samples.jsonl").read_bytes()
    assert a["metrics"] == b["metrics"]
    lines = [json.loads(x) for x in (tmp_path / "a" / "timing.jsonl").read_text().splitlines()]
    assert [x["ids"] for x in lines] == [["q0", "q1"], ["q2", "q3"]]  # the warm-up is not a timed batch
    assert all(x["s_per_sample"] == pytest.approx(x["wall_s"] / 2) and x["rank"] == 0 for x in lines)


def test_report_and_runner_read_a_torn_last_line_the_same_way(session, tmp_path):
    from hallufix.errors import RunDirError
    from hallufix.report import ReportError, read_samples

    execute(session, YesNoTask(n=4), spec(), tmp_path / "run", progress=False)
    path = tmp_path / "run" / "samples.jsonl"
    full = path.read_bytes()
    path.write_bytes(full + b'{"id": "q9", "spl')  # a kill mid-write
    assert list(read_records(tmp_path / "run")) == list(read_samples(tmp_path / "run")) == ["q0", "q1", "q2", "q3"]
    lines = full.splitlines(keepends=True)
    path.write_bytes(lines[0] + b"{not json\n" + b"".join(lines[1:]))  # a corrupt line that is not the last
    with pytest.raises(RunDirError, match=r"samples.jsonl:2: corrupt record"):
        read_records(tmp_path / "run")
    with pytest.raises(ReportError, match=r"samples.jsonl:2: corrupt record"):
        read_samples(tmp_path / "run")


def test_schema_1_results_stay_readable(tmp_path):
    old = {"schema_version": 1, "model": {"id": "m"}, "methods": [], "task": {"name": "t", "n": 1},
           "metrics": {"all": {"accuracy": {"value": 1.0, "higher_is_better": True, "n": 1}}},
           "overhead": {"wall_s_per_sample": 0.1}}
    (tmp_path / "results.json").write_text(json.dumps(old))
    res = read_results(tmp_path)
    assert res["overhead"]["ratio"] is None and res["execution"]["world_size"] is None
    (tmp_path / "results.json").write_text(json.dumps({**old, "schema_version": 99}))
    with pytest.raises(ValueError, match="newer than this hallufix reads"):
        read_results(tmp_path)


def test_the_console_summary_prints_and_never_writes(session, tmp_path):
    from hallufix.report_summary import summary_table

    base, res = run_with_baseline(session, YesNoTask(n=3), spec(), tmp_path, progress=False)
    before = {p: p.read_bytes() for p in tmp_path.rglob("results.json")}
    table = summary_table([(RunSpec(), tmp_path / "baseline", base), (spec(), None, res)])
    assert "x baseline" in table and f"{res['overhead']['ratio']:.4f}" in table
    assert {p: p.read_bytes() for p in tmp_path.rglob("results.json")} == before


@pytest.mark.parametrize("name", ["shapes-pope", "shapes-chair", "shapes-mme"])
def test_built_in_tasks_declare_every_metric_they_score_and_counts_have_no_direction(name):
    task = get_task(name)
    records = [{"id": s.id, "split": s.split, "question": s.question, "answer": s.answer, "meta": s.meta,
                "output": s.answer or "a red circle", "parsed": task.parse(s, s.answer or "a red circle")}
               for s in task.samples()[:40]]
    scored = {m for split in task.score(records).values() for m in split}
    declared = {m.name: m.higher_is_better for m in task.metrics}
    assert scored <= set(declared), scored - set(declared)
    for count in ("tp", "fp", "tn", "fn", "n"):
        assert declared.get(count) is None
