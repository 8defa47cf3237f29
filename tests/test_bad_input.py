"""The bad-input corpus: what a new user (or their data, plugin, disk) gets wrong, through the CLI in-process.

Every case asserts the exit status, the message (what is wrong and how to fix it, no traceback without --debug)
and that finished records are intact. Cases that are caught before the model loads run with ``Session.load``
patched to fail, so they prove the check happens before any weights load. Model cases use the built-in model on a
tiny JSONL task (3 images of mixed sizes and modes).
"""
from __future__ import annotations

import errno
import json

import pytest
from PIL import Image

from bad_input_plugins import PLUGINS
from hallufix.cli import main


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Task files, images, grid files and local plugins (good and bad), written once."""
    d = tmp_path_factory.mktemp("bad_input")
    Image.new("RGB", (64, 48), (200, 30, 30)).save(d / "a.png")
    Image.new("L", (40, 56), 128).save(d / "b.png")
    Image.new("RGBA", (52, 52), (0, 90, 200, 255)).save(d / "c.png")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (d / "empty.png").write_bytes(b"")
    rows = [{"id": "q1", "image": "a.png", "question": "is there a circle in the image ?", "answer": "yes"},
            {"id": "q2", "image": "b.png", "question": "is there a square in the image ?", "answer": "no"},
            {"id": "q3", "image": "c.png", "question": "is there a star in the image ?", "answer": "yes"}]

    def jsonl(name, recs):
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")

    jsonl("good.jsonl", rows)
    jsonl("dup.jsonl", rows + [dict(rows[1])])
    jsonl("missing_image.jsonl", rows[:1] + [dict(rows[1], image="nowhere.png")])
    jsonl("corrupt_image.jsonl", rows[:2] + [dict(rows[2], image="corrupt.jpg")])
    jsonl("empty_image.jsonl", rows[:2] + [dict(rows[2], image="empty.png")])
    jsonl("no_question.jsonl", [rows[0], {"id": "q9", "image": "a.png"}])
    jsonl("padded.jsonl", [dict(rows[0], question="is there a circle ?"),
                           dict(rows[1], question="is there a square in the picture , near the top edge ?"), rows[2]])
    jsonl("long.jsonl", rows[:1] + [dict(rows[1], question="is there " + "a very large square and " * 150 + "?")])
    (d / "malformed.jsonl").write_text(json.dumps(rows[0]) + "\n{\"id\": \"q2\", \"image\": \n", encoding="utf-8")
    (d / "latin1.jsonl").write_bytes((json.dumps(rows[0]) + "\n").encode() +
                                     '{"image": "a.png", "question": "caf\u00e9 ?"}\n'.encode("latin-1"))
    (d / "blank.jsonl").write_text("\n\n", encoding="utf-8")
    (d / "typed.jsonl").write_text(json.dumps({"image": "a.png", "question": 42}) + "\n", encoding="utf-8")
    (d / "a_folder").mkdir()
    grids = {
        "malformed.yaml": "model: builtin\ngrid:\n  plugins: [none, clva\n",
        "list.yaml": "- model: builtin\n- grid: {}\n",
        "unknown_key.yaml": "model: builtin\ngird:\n  plugins: [none, clva]\n",
        "grid_list.yaml": "model: builtin\ngrid:\n  - plugins\n",
        "bad_type.yaml": "batch_size: abc\ngrid:\n  plugins: [none, clva]\n",
        "nested.yaml": "grid:\n  clva.alpha: [[1, 2]]\n  plugins: [clva]\n",
        "empty_axis.yaml": "grid:\n  plugins: []\n",
        "nan.yaml": "grid:\n  plugins: [clva]\n  clva.alpha: [10, .nan]\n",
    }
    for name, text in grids.items():
        (d / name).write_text(text, encoding="utf-8")
    (d / "latin1.yaml").write_bytes("model: builtin  # caf\u00e9\ngrid:\n  plugins: [none]\n".encode("latin-1"))
    for name, src in PLUGINS.items():
        (d / f"plug_{name}.py").write_text(src, encoding="utf-8")
    (d / "a_file").write_text("x")
    return d


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test (exit 1, not 2) if any weights are loaded."""
    from hallufix import api

    def refuse(*a, **k):
        raise AssertionError("weights were loaded before the bad input was refused")

    monkeypatch.setattr(api.Session, "load", classmethod(refuse))


def cli(argv, capsys):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("hallufix: error: ")]
    assert lines, err
    assert "Traceback" not in err, err
    return lines[-1]


def records(path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]  # strict: a torn line would raise


# ---------------------------------------------------------------------------------------------------- before load
RUN = ["run", "--quiet", "--no-baseline"]
PRELOAD = [
    # run settings (CLI flags and key=value run keys)
    ("batch-size-0", RUN + ["--batch-size", "0"], "batch_size=0 is out of range — it must be at least 1"),
    ("batch-size-negative", RUN + ["--batch-size", "-3"], "batch_size=-3 is out of range"),
    ("batch-size-abc", RUN + ["batch_size=abc"], "batch_size='abc' is not a whole number"),
    ("batch-size-float", RUN + ["batch_size=2.5"], "batch_size='2.5' is not a whole number"),
    ("limit-0", RUN + ["--limit", "0"], "limit=0 is out of range — it must be at least 1"),
    ("limit-negative", RUN + ["--limit", "-1"], "limit=-1 is out of range"),
    ("limit-abc", RUN + ["limit=abc"], "limit='abc' is not a whole number"),
    ("max-new-tokens-0", RUN + ["--max-new-tokens", "0"], "max_new_tokens=0 is out of range"),
    ("max-new-tokens-negative", RUN + ["max_new_tokens=-5"], "max_new_tokens=-5 is out of range"),
    ("seed-negative", RUN + ["seed=-1"], "seed=-1 is out of range — it must be 0 or more"),
    ("run-key-typo", RUN + ["bach_size=2"], "Did you mean 'batch_size'"),
    ("dtype-float64", RUN + ["--dtype", "float64"], "unsupported dtype 'float64' — use one of auto"),
    ("dtype-typo", RUN + ["--dtype", "float33"], "unsupported dtype 'float33'"),
    ("device-cuda", RUN + ["--device", "cuda"], "sees no CUDA GPU — use --device cpu"),
    ("device-cuda-index", RUN + ["--device", "cuda:3"], "sees no CUDA GPU"),
    ("device-unknown", RUN + ["--device", "gpu0"], "unknown device 'gpu0'"),
    # method names and config values
    ("plugin-typo", RUN + ["--plugins", "clav"], "Did you mean 'clva'"),
    ("plugin-twice", RUN + ["--plugins", "clva,clva"], "listed twice"),
    ("method-key-typo", RUN + ["--plugins", "clva", "clva.alpah=3"], "unknown config key 'alpah'"),
    ("method-not-in-stack", RUN + ["--plugins", "clva", "ara.top_k=2"], "not in the stack"),
    ("clva-alpha-nan", RUN + ["--plugins", "clva", "clva.alpha=nan"], "clva.alpha=nan is not a finite number"),
    ("clva-alpha-inf", RUN + ["--plugins", "clva", "clva.alpha=inf"], "clva.alpha=inf is not a finite number"),
    ("clva-beta-neg-inf", RUN + ["--plugins", "clva", "clva.beta=-inf"], "clva.beta=-inf is not a finite number"),
    ("fhi-g-perc-nan", RUN + ["--plugins", "fhi", "fhi.g_perc=nan"], "fhi.g_perc=nan is not a finite number"),
    ("contrast-scale-inf", RUN + ["--plugins", "contrast", "contrast.scale=inf"], "contrast.scale=inf"),
    ("clva-alpha-abc", RUN + ["--plugins", "clva", "clva.alpha=abc"], "bad value for 'alpha'"),
    ("override-no-equals", RUN + ["--plugins", "clva", "clva.alpha"], "unrecognized|key=value"),
    # task files
    ("task-unknown", RUN + ["--task", "pop"], "unknown task 'pop'"),
    ("task-file-missing", RUN + ["--task", "jsonl:{d}/nope.jsonl"], "task file not found: .*nope.jsonl"),
    ("task-file-folder", RUN + ["--task", "jsonl:{d}/a_folder"], "is a folder, not a task file"),
    ("task-not-utf8", RUN + ["--task", "jsonl:{d}/latin1.jsonl"], r"latin1.jsonl:2: not UTF-8 text"),
    ("task-malformed-line", RUN + ["--task", "jsonl:{d}/malformed.jsonl"], r"malformed.jsonl:2: malformed JSON"),
    ("task-missing-field", RUN + ["--task", "jsonl:{d}/no_question.jsonl"], r"no_question.jsonl:2: each line needs"),
    ("task-bad-type", RUN + ["--task", "jsonl:{d}/typed.jsonl"], r"typed.jsonl:1: 'image' and 'question' must be"),
    ("task-no-samples", RUN + ["--task", "jsonl:{d}/blank.jsonl"], "holds no samples"),
    ("task-duplicate-ids", RUN + ["--task", "jsonl:{d}/dup.jsonl"], "duplicate sample ids: 'q2'"),
    ("task-missing-image", RUN + ["--task", "jsonl:{d}/missing_image.jsonl"],
     r"image not found: .*nowhere.png \(sample q2\)"),
    ("task-unknown-option", RUN + ["task.bogus=1"], "Task options:"),
    ("task-bad-option-value", RUN + ["--task", "jsonl:{d}/good.jsonl", "task.parser=nonsense"],
     "unknown yes/no parser"),
    # the output folder
    ("output-is-file", RUN + ["--output", "{d}/a_file"], "is a file, not a folder"),
    ("output-under-file", RUN + ["--output", "{d}/a_file/run"], "is a file, so no folder can be made under it"),
    # grid files
    ("grid-missing", ["ablate", "{d}/nope.yaml"], "grid file not found"),
    ("grid-malformed", ["ablate", "{d}/malformed.yaml"], r"malformed.yaml:\d+: malformed YAML"),
    ("grid-list", ["ablate", "{d}/list.yaml"], "a grid file is a YAML mapping"),
    ("grid-unknown-key", ["ablate", "{d}/unknown_key.yaml"], "unknown top-level key 'gird'. Did you mean 'grid'"),
    ("grid-grid-list", ["ablate", "{d}/grid_list.yaml"], "'grid' must map keys to lists"),
    ("grid-bad-type", ["ablate", "{d}/bad_type.yaml"], "batch_size='abc' is not a whole number"),
    ("grid-nested", ["ablate", "{d}/nested.yaml"], "holds a nested list"),
    ("grid-empty-axis", ["ablate", "{d}/empty_axis.yaml"], "has no values"),
    ("grid-nan", ["ablate", "{d}/nan.yaml"], "clva.alpha=nan is not a finite number"),
    ("grid-not-utf8", ["ablate", "{d}/latin1.yaml"], "latin1.yaml: not UTF-8"),
    ("ablate-nothing", ["ablate"], "nothing to sweep"),
    # local plugin files that cannot even be loaded
    ("plugin-file-missing", RUN + ["--plugins", "{d}/nope.py"], "local plugin file not found"),
    ("plugin-syntax", RUN + ["--plugins", "{d}/plug_syntax.py"], r"plug_syntax.py:1: syntax error"),
    ("plugin-import", RUN + ["--plugins", "{d}/plug_imports.py"],
     "failed to import: ModuleNotFoundError: No module named 'hallufix_no_such_module_xyz'"),
    ("plugin-shadows-builtin", RUN + ["--plugins", "{d}/plug_shadow.py"], "'clva', which is the name of a built-in"),
    # other verbs
    ("report-not-a-run", ["report", "{d}/a_folder"], "no results.json|not a run directory"),
    ("report-missing", ["report", "{d}/nope"], "not a run directory"),
    ("score-pope-missing", ["score", "pope", "--questions", "{d}/nope.json", "--answers", "{d}/good.jsonl"],
     "file not found"),
    ("score-pope-not-utf8", ["score", "pope", "--questions", "{d}/latin1.jsonl", "--answers", "{d}/latin1.jsonl"],
     r"latin1.jsonl:2: not UTF-8"),
    ("inspect-no-image", ["inspect", "--image", "{d}/nope.png", "--question", "q", "--output", "{d}/insp"],
     "image not found"),
    ("inspect-corrupt-image", ["inspect", "--image", "{d}/corrupt.jpg", "--question", "q", "--output",
                               "{d}/insp"], r"cannot read image .*corrupt.jpg"),
]


@pytest.mark.parametrize("argv, message", [c[1:] for c in PRELOAD], ids=[c[0] for c in PRELOAD])
def test_refused_before_any_weights_load(argv, message, data, tmp_path, capsys, no_weights):
    argv = [a.format(d=data) for a in argv]
    if argv[0] in ("run", "ablate") and "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]
    try:
        code, _, err = cli(argv, capsys)
    except SystemExit as exc:  # argparse's own refusals (exit 2, usage line)
        code, err = exc.code, capsys.readouterr().err
        assert code == 2 and "usage:" in err
        return
    assert code == 2, err
    import re

    assert re.search(message, one_line_error(err)), err
    assert not (tmp_path / "out").exists()  # nothing was created


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder on a read-only file system (a tmpfs mounted ``ro``): refused even for root, whom permission bits
    do not stop. Skipped where mounting is not allowed."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root / CAP_SYS_ADMIN)")
    yield ro
    subprocess.run(["umount", str(ro)], capture_output=True)


def test_read_only_output_folder_is_refused_before_loading(read_only_folder, data, capsys, no_weights):
    code, _, err = cli(RUN + ["--output", str(read_only_folder / "run")], capsys)
    assert code == 2 and "is not writable — choose a folder you can write" in one_line_error(err), err


# ---------------------------------------------------------------------------------------------------- with a model
def run_builtin(data, out, *extra, task="good.jsonl", batch_size=1):
    return ["run", "--quiet", "--no-baseline", "--task", f"jsonl:{data}/{task}", "--batch-size", str(batch_size),
            "--output", str(out), *extra]


@pytest.mark.parametrize("plugin, message, finished", [
    ("init", r"plugin 'init-fails' .*failed in __init__: RuntimeError: cannot build myself", 0),
    ("configure", r"plugin 'configure-fails' .*failed in hallufix_configure: IndexError", 0),
    ("layer", r"method 'bad-layer' declared attn_bias.99, but the model has 8 layers", 0),
    ("forward", r"plugin 'forward-fails' .*failed in hallufix_attn_bias: KeyError: 'missing anchor'.*"
                r"1 of 3 samples are finished", 1),
    ("shape", r"plugin 'wrong-shape' .*failed in hallufix_attn_bias: ValueError: layer 1: bias must be", 0),
    ("batch_end", r"plugin 'batch-end-fails' .*failed in hallufix_batch_end: ValueError: summary failed.*"
                  r"2 of 3 samples are finished", 2),
    ("nan_logits", r"non-finite values \(NaN/inf\) for samples q1: first at the logits .*"
                   r"method 'nan-logits' edits the logits", 0),
    ("nan_bias", r"non-finite values \(NaN/inf\) for samples q1: first at decoder layer 2 .*"
                 r"method 'nan-bias' acts there", 0),
])
def test_plugin_failures_name_the_plugin_and_keep_finished_work(plugin, message, finished, data, tmp_path, capsys):
    import re

    out = tmp_path / "out"
    code, _, err = cli(run_builtin(data, out, "--plugins", f"{data}/plug_{plugin}.py"), capsys)
    assert code == 2
    assert re.search(message, one_line_error(err)), err
    cells = list(out.iterdir()) if out.exists() else []
    if finished:
        assert len(records(cells[0] / "samples.jsonl")) == finished
    else:
        assert not cells  # nothing finished: no empty run directory is left behind


@pytest.mark.parametrize("override, message", [
    ("clva.pos_layer=99", r"plugin 'clva' failed in hallufix_configure: ValueError: pos_layer=99 is outside"),
    ("clva.apply_layers=abc", r"plugin 'clva' failed in hallufix_configure: ValueError: .*'abc'"),
])
def test_config_values_only_the_model_can_refute(override, message, data, tmp_path, capsys):
    """Layer indices need the model's depth: refused when the method configures, before any sample runs."""
    import re

    code, _, err = cli(run_builtin(data, tmp_path / "out", "--plugins", "clva", override), capsys)
    assert code == 2 and re.search(message, one_line_error(err)), err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_plugin_failure_then_fixed_plugin_resumes(data, tmp_path, capsys, monkeypatch):
    """The batch a failing batch_end generated is kept; once the plugin works, the same command resumes."""
    out = tmp_path / "out"
    args = run_builtin(data, out, "--plugins", f"{data}/plug_batch_end.py")
    assert cli(args, capsys)[0] == 2
    cell = next(out.iterdir())
    kept = records(cell / "samples.jsonl")
    assert [r["id"] for r in kept] == ["q1", "q2"]
    monkeypatch.setenv("BATCH_END_FAIL_AT", "99")
    assert cli(args, capsys)[0] == 0
    assert records(cell / "samples.jsonl")[:2] == kept and len(records(cell / "samples.jsonl")) == 3
    overhead = json.loads((cell / "results.json").read_text())["overhead"]
    assert overhead["samples_timed"] == 3 and overhead["processes"] == 2


def test_nonfinite_plugin_diagnostics_stay_strict_json(data, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = cli(run_builtin(data, out, "--plugins", f"{data}/plug_nan_diag.py"), capsys)
    assert code == 0, err
    recs = records(next(out.iterdir()) / "samples.jsonl")  # json.loads of bare NaN would pass: check the text
    text = (next(out.iterdir()) / "samples.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert recs[0]["diagnostics"]["nan-diagnostics"] == {"ratio": None, "peak": None, "ok": 1.0}
    assert recs[0]["nonfinite_fields"] == ["diagnostics.nan-diagnostics.ratio", "diagnostics.nan-diagnostics.peak"]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_nonfinite_rows_can_be_recorded_flagged_and_left_out(batch_size, data, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = cli(run_builtin(data, out, "--plugins", f"{data}/plug_nan_star.py", "--on-nonfinite", "record",
                                   batch_size=batch_size), capsys)
    assert code == 0 and "warning: 1 sample(s)" in err and "left out of its metrics" in err
    cell = next(out.iterdir())
    recs = {r["id"]: r for r in records(cell / "samples.jsonl")}
    assert recs["q3"]["output"] is None and "method 'nan-star' edits the logits" in recs["q3"]["nonfinite"]
    assert recs["q1"]["output"] and "nonfinite" not in recs["q1"]
    res = json.loads((cell / "results.json").read_text())
    assert res["nonfinite"]["ids"] == ["q3"] and res["metrics"]["all"]["n"]["value"] == 2
    code, _, err = cli(run_builtin(data, tmp_path / "stop", "--plugins", f"{data}/plug_nan_star.py",
                                   batch_size=batch_size), capsys)
    assert code == 2 and "for samples q3" in one_line_error(err) and "--on-nonfinite record" in err


def test_neg_inf_on_every_visual_key_matches_one_at_a_time(data, tmp_path, capsys):
    batched, single = tmp_path / "b", tmp_path / "s"
    plug = f"{data}/plug_ninf_visual.py"
    assert cli(run_builtin(data, batched, "--plugins", plug, task="padded.jsonl", batch_size=3), capsys)[0] == 0
    assert cli(run_builtin(data, single, "--plugins", plug, task="padded.jsonl", batch_size=1), capsys)[0] == 0
    a = [r["output"] for r in records(next(batched.iterdir()) / "samples.jsonl")]
    b = [r["output"] for r in records(next(single.iterdir()) / "samples.jsonl")]
    assert a == b


@pytest.mark.parametrize("task, message, finished", [
    ("corrupt_image.jsonl", r"cannot read image .*corrupt.jpg \(sample q3\).*2 of 3 samples are finished", 2),
    ("empty_image.jsonl", r"cannot read image .*empty.png \(sample q3\).*2 of 3 samples are finished", 2),
    ("long.jsonl", r"question\(s\) longer than the model's context of 512 positions .*: q2 \(\d+ tokens\)", 0),
])
def test_bad_data_at_run_time_names_sample_and_keeps_work(task, message, finished, data, tmp_path, capsys):
    import re

    out = tmp_path / "out"
    code, _, err = cli(run_builtin(data, out, task=task), capsys)
    assert code == 2 and re.search(message, one_line_error(err)), err
    if finished:
        assert len(records(out / "baseline" / "samples.jsonl")) == finished
    else:
        assert not (out / "baseline").exists()


def test_interrupt_says_resume_only_when_something_finished(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, _, err = cli(run_builtin(data, out, "--plugins", f"{data}/plug_interrupt.py"), capsys)
    assert code == 130 and "1 of 3 samples are finished" in err and "rerun the same command" in err
    assert len(records(next(out.iterdir()) / "samples.jsonl")) == 1
    monkeypatch.setenv("INTERRUPT_AT_BATCH", "1")  # interrupted before anything finished: no resume promise
    code, _, err = cli(run_builtin(data, tmp_path / "other", "--plugins", f"{data}/plug_interrupt.py"), capsys)
    assert code == 130 and err.strip().endswith("hallufix: interrupted") and "resume" not in err
    assert not (tmp_path / "other").exists() or not list((tmp_path / "other").iterdir())


def test_non_utf8_file_read_by_any_reader_names_the_file(tmp_path, capsys, monkeypatch):
    """A reader that does not use tasks.base.read_text still gives a one-line message naming the file."""
    import hallufix.cli.report as verb

    bad = tmp_path / "gt.txt"
    bad.write_bytes("caf\u00e9\n".encode("latin-1"))

    def reader(args):
        path = bad
        return len(path.read_text(encoding="utf-8"))

    monkeypatch.setattr(verb, "_report", reader)
    code, _, err = cli(["report", str(tmp_path)], capsys)
    assert code == 2 and f"{bad} is not UTF-8 text" in one_line_error(err)


# ---------------------------------------------------------------------------------------------------- run dirs
def test_corrupt_middle_line_offers_to_drop_only_that_line(data, tmp_path, capsys):
    out = tmp_path / "out"
    args = run_builtin(data, out)
    assert cli(args, capsys)[0] == 0
    path = out / "baseline" / "samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:25] + "#garbage", lines[2]]) + "\n")
    code, _, err = cli(args, capsys)
    assert code == 2
    msg = one_line_error(err)
    assert "samples.jsonl:2: corrupt record" in msg and "--drop-corrupt-lines" in msg and "delete" not in msg
    assert path.read_text().splitlines()[0] == lines[0]  # untouched
    assert cli(args + ["--drop-corrupt-lines"], capsys)[0] == 0
    by_id = lambda rs: sorted(rs, key=lambda r: r["id"])  # noqa: E731  (the redone sample is appended)
    assert by_id(records(path)) == by_id([json.loads(ln) for ln in lines])
    assert "#garbage" in (out / "baseline" / "samples.jsonl.dropped").read_text()


def test_second_writer_is_refused(data, tmp_path, capsys):
    from hallufix.rundir import RunLock

    out = tmp_path / "out"
    with RunLock(out / "baseline"):
        code, _, err = cli(run_builtin(data, out), capsys)
    assert code == 2 and "is being written by another hallufix run (pid" in one_line_error(err)
    assert cli(run_builtin(data, out), capsys)[0] == 0  # released: the run goes ahead


def test_full_disk_leaves_no_torn_line_and_resumes(data, tmp_path, capsys, monkeypatch):
    import os

    from hallufix.runner import store as rundir

    out = tmp_path / "out"
    real_write, state = os.write, {"samples": 0}

    def fill_disk(fd, buf):  # the second batch of samples: 17 bytes reach the file, then the disk is full
        if os.readlink(f"/proc/self/fd/{fd}").endswith("samples.jsonl"):
            state["samples"] += 1
            if state["samples"] == 2:
                real_write(fd, bytes(buf[:17]))
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, buf)

    monkeypatch.setattr(rundir.os, "write", fill_disk)
    code, _, err = cli(run_builtin(data, out), capsys)
    msg = one_line_error(err)
    assert code == 2 and "no space left on the device writing" in msg and "samples.jsonl" in msg
    assert "1 of 3 samples are finished" in msg
    assert len(records(out / "baseline" / "samples.jsonl")) == 1  # strict parse: no torn line
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(rundir.os, "write", real_write)
    assert cli(run_builtin(data, out), capsys)[0] == 0
    assert [r["id"] for r in records(out / "baseline" / "samples.jsonl")] == ["q1", "q2", "q3"]


def test_atomic_write_leaves_no_zero_byte_temp_on_a_full_disk(tmp_path, monkeypatch):
    import os

    from hallufix.runner import store as rundir

    (tmp_path / "env.json").write_text('{"old": true}\n')

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        rundir.write_json(tmp_path / "env.json", {"new": True})
    assert (tmp_path / "env.json").read_text() == '{"old": true}\n' and not list(tmp_path.glob("*.tmp"))


def test_rerun_and_resume_keep_overhead_and_hook_counts(data, tmp_path, capsys):
    out = tmp_path / "out"
    args = run_builtin(data, out, "--plugins", "clva", "--limit", "2")
    assert cli(args, capsys)[0] == 0
    first = json.loads((out / "clva" / "results.json").read_text())
    hooks = json.loads((out / "clva" / "hooks.json").read_text())
    assert first["overhead"]["samples_timed"] == 2 and hooks["fired"]
    assert cli(args, capsys)[0] == 0  # finished: nothing regenerated, nothing overwritten
    assert json.loads((out / "clva" / "results.json").read_text())["overhead"] == first["overhead"]
    assert json.loads((out / "clva" / "hooks.json").read_text()) == hooks


# ---------------------------------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    import shutil

    from hallufix.models.tiny import save_tiny

    root = tmp_path_factory.mktemp("models")
    ok = root / "ok"
    save_tiny("llava", ok)
    for name in ("truncated", "no_weights", "bad_type", "no_config"):
        shutil.copytree(ok, root / name)
    with open(root / "truncated" / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    (root / "no_weights" / "model.safetensors").unlink()
    cfg = json.loads((root / "bad_type" / "config.json").read_text())
    (root / "bad_type" / "config.json").write_text(json.dumps(dict(cfg, model_type="gpt2")))
    (root / "no_config" / "config.json").unlink()
    return root


@pytest.mark.parametrize("folder, message, absent", [
    ("truncated", "weights in .* are corrupt or truncated", "download"),
    ("no_weights", "no file named model.safetensors.* — Copy the complete save_pretrained folder", "download"),
    ("bad_type", "model_type 'gpt2', which hallufix does not support", "Traceback"),
    ("no_config", "has no config.json", "Traceback"),
])
def test_broken_model_folders(folder, message, absent, model_folders, capsys):
    import re

    code, _, err = cli(["hooks", "--model", str(model_folders / folder)], capsys)
    msg = one_line_error(err)
    assert code == 2 and re.search(message, msg) and absent not in msg, err


def test_uncached_hub_id_names_hf_download(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli(["hooks", "--model", "some-org/not-a-model"], capsys)
    msg = one_line_error(err)
    assert code == 2 and "hf download some-org/not-a-model" in msg and "huggingface-cli" not in msg


def test_hooks_with_a_plugin_typo(capsys):
    code, _, err = cli(["hooks", "--plugins", "clvaa"], capsys)
    assert code == 2 and "unknown plugin 'clvaa'. Did you mean 'clva'" in one_line_error(err)


# ---------------------------------------------------------------------------------------------------- environment
def test_two_packages_registering_one_name(monkeypatch, capsys):
    """`plugins` still lists everything; only a run that selects the ambiguous name is refused."""
    import types

    from hallufix import plugins as P

    class EP:
        def __init__(self, dist, module):
            self.name, self.dist, self.module = "dup", types.SimpleNamespace(name=dist, version="1.0"), module

        def load(self):
            return self.module

    def module(dist):
        m = types.ModuleType(f"mod_{dist}")

        @__import__("hallufix").hookimpl
        def hallufix_register_methods(register):
            register("twin", "json:JSONDecoder")

        m.hallufix_register_methods = hallufix_register_methods
        return m

    real = P.entry_points
    monkeypatch.setattr(P, "entry_points", lambda group: list(real(group=group)) + [EP("pkg-a", module("a")),
                                                                                    EP("pkg-b", module("b"))])
    code, out, err = cli(["plugins"], capsys)
    assert code == 0 and "clva" in out and "twin" in out and "also registered by pkg-a" in out
    code, _, err = cli(["run", "--plugins", "twin"], capsys)
    assert code == 2 and "method 'twin' is provided by several distributions (pkg-a, pkg-b)" in one_line_error(err)


def test_broken_pipe_exits_quietly(monkeypatch, capsys):
    import sys

    class Closed:
        def write(self, s):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["plugins"]) == 0
    assert capsys.readouterr().err == ""


def test_internal_bug_keeps_traceback_and_asks_for_a_report(monkeypatch, capsys):
    import hallufix.cli.plugins as verb

    monkeypatch.setattr(verb, "_plugins", lambda args: 1 / 0)
    code, _, err = cli(["plugins"], capsys)
    assert code == 1 and "Traceback" in err and "ZeroDivisionError" in err and "please report" in err


@pytest.mark.parametrize("how", ["flag-before", "flag-after", "env"])
def test_debug_shows_the_traceback_of_a_user_error(how, monkeypatch, capsys, no_weights):
    argv = ["run", "--plugins", "clva", "clva.alpha=nan"]
    if how == "flag-before":
        argv = ["--debug"] + argv
    elif how == "flag-after":
        argv = argv + ["--debug"]
    else:
        monkeypatch.setenv("HALLUFIX_DEBUG", "1")
    code, _, err = cli(argv, capsys)
    assert code == 2 and "Traceback" in err and "hallufix: error: " in err and "not a finite number" in err


def test_trimmed_token_ids_in_a_batch():
    """Batched rows end at their EOS like one-at-a-time rows (no trailing pad ids)."""
    import torch

    from hallufix.intercept.guards import trim_at_eos

    assert trim_at_eos(torch.tensor([34, 2, 0, 0, 0, 0]), 2).tolist() == [34, 2]
    assert trim_at_eos(torch.tensor([34, 5, 6]), [2, 7]).tolist() == [34, 5, 6]
    assert trim_at_eos(torch.tensor([7, 2]), [2, 7]).tolist() == [7]


def test_batched_token_ids_match_one_at_a_time(data):
    """A left-padded batch on the built-in model: each row's ids end at its EOS, as generated alone."""
    from hallufix.api import Session

    s = Session.load("builtin")
    images = [Image.open(data / n).convert("RGB") for n in ("a.png", "b.png", "c.png")]
    questions = ["is there a circle ?", "describe the image .", "is there a square in the picture , near the top ?"]
    run = s.start([])
    batched = run.generate(images, questions, max_new_tokens=12, output_logits=True)
    eos = s.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    assert all(int(b.token_ids[-1]) in eos for b in batched)
    assert len({len(b.token_ids) for b in batched}) > 1  # rows end at different steps: the shorter ones were padded
    for img, q, b in zip(images, questions, batched):
        alone = run.generate([img], [q], max_new_tokens=12)[0]
        assert b.token_ids.tolist() == alone.token_ids.tolist() and b.text == alone.text
        assert b.logits.shape[0] == len(b.token_ids)


def test_killed_mid_batch_log_line_loses_no_later_measurement(data, tmp_path, capsys):
    """A kill can tear timing.jsonl's last line too: it is cut, and the next batch's timing still counts."""
    out = tmp_path / "out"
    args = run_builtin(data, out, "--limit", "2")
    assert cli(args, capsys)[0] == 0
    cell = out / "baseline"
    lines = (cell / "samples.jsonl").read_text().splitlines()
    (cell / "samples.jsonl").write_text(lines[0] + "\n")  # the second sample "never finished" ...
    log = (cell / "timing.jsonl").read_text().splitlines()
    (cell / "timing.jsonl").write_text(log[0] + "\n" + log[1][:20])  # ... and its log line was torn
    assert cli(run_builtin(data, out, "--limit", "2"), capsys)[0] == 0
    assert json.loads((cell / "results.json").read_text())["overhead"]["samples_timed"] == 2
    assert len(records(cell / "timing.jsonl")) == 2


def test_unreadable_config_of_an_existing_run(data, tmp_path, capsys):
    out = tmp_path / "out"
    args = run_builtin(data, out, "--limit", "1")
    assert cli(args, capsys)[0] == 0
    (out / "baseline" / "config.yaml").write_text("model: [unclosed\n")
    code, _, err = cli(args, capsys)
    assert code == 2 and "config.yaml is unreadable" in one_line_error(err)
    assert len(records(out / "baseline" / "samples.jsonl")) == 1
