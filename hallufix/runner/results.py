"""The results schema: what ``results.json`` holds, built once when a run finishes, and read back for reports.

``results.json`` (``schema_version`` 2)::

    schema_version, run_id, model {id, family, dtype, attn_implementation}, methods [{name, dist, version, config}],
    task {name, n, ...the task's own record}, swept, seed, limit,
    metrics {split: {metric: {value, higher_is_better, n[, partial][, undeclared]}}},
    nonfinite {n, ids, excluded_from_metrics} | null,
    overhead {wall_s_per_sample, wall_s_per_token, tokens_per_sample, peak_mem_mb, samples_timed, processes,
              baseline, baseline_wall_s_per_sample, ratio, ratio_iqr, paired_samples},
    execution {world_size, ranks, schedule},
    identity, identity_hash, sample_ids_sha256, provenance {...}

Directions: every metric a task scores is declared by the task (:attr:`hallufix.tasks.base.Task.metrics`) with
``higher_is_better`` true, false, or ``null`` for counts and diagnostics (``n``, ``fp``, ``yes_ratio``). A metric the
task did not declare is recorded with ``higher_is_better: null`` and ``undeclared: true`` — never a guessed
direction. Schema 1 files (before ``execution`` and the baseline keys) read the same through :func:`read_results`.
"""
from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
RESULTS = "results.json"


class ResultsError(ValueError):
    """A ``results.json`` that cannot be read: names the file and what is wrong."""


def git_hash() -> tuple[str | None, bool | None]:
    """The commit of the hallufix checkout this runs from, and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=5)
        return (head.stdout.strip() or None), (bool(dirty.stdout.strip()) if head.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


def environment(session, spec, methods, world_size: int = 1) -> dict:
    """The ``env.json`` record."""
    import torch
    import transformers

    from hallufix import __version__

    commit, dirty = git_hash()
    return {
        "hallufix": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "platform": platform.platform(), "git_hash": commit,
        "git_dirty": dirty, "device": str(session.device), "dtype": str(next(session.model.parameters()).dtype),
        "attn_implementation": session.adapter.get_text_attn_implementation(session.model),
        "batch_size": spec.batch_size, "seed": spec.seed, "threads": torch.get_num_threads(),
        "world_size": world_size,
        "plugins": [{"name": r["name"], "dist": r["dist"], "version": r["version"]} for r in methods.record()],
    }


def metrics_block(task, scores: dict[str, dict[str, Any]], counts: dict[str, int]) -> dict:
    """``{split: {metric: {value, higher_is_better, n}}}`` from a task's scores (directions: module docstring).
    A task may score a metric as a dict ``{"value": None, "partial": "why"}`` (an MME total over an incomplete set
    of subtasks): the extra keys are kept."""
    direction = {m.name: m.higher_is_better for m in task.metrics}
    out: dict = {}
    for split, metrics in scores.items():
        block = out.setdefault(split, {})
        for name, value in metrics.items():
            entry = {"value": value, "higher_is_better": direction.get(name),
                     "n": counts.get(split, counts.get("all", 0))}
            if isinstance(value, dict):
                entry.update(value)
            if name not in direction:
                entry["undeclared"] = True
            block[name] = entry
    return out


def overhead_block(m: dict, vs: dict) -> dict:
    """The ``overhead`` entry from :func:`hallufix.runner.timing.measurements` and
    :func:`hallufix.runner.timing.overhead_vs`."""
    per = lambda a, b: (m[a] / m[b]) if m[b] else None  # noqa: E731
    return {"wall_s_per_sample": per("wall_s", "samples"), "wall_s_per_token": per("wall_s", "tokens"),
            "tokens_per_sample": per("tokens", "samples"), "peak_mem_mb": m.get("peak_mem_mb"),
            "samples_timed": m["samples"], "processes": m["processes"], **vs}


def read_results(run_dir: str | Path) -> dict:
    """``results.json`` of a run directory, schema 1 or 2 (:class:`ResultsError` if missing or malformed). Schema 1
    files get the keys schema 2 added, as ``None``."""
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        raise ResultsError(f"{run_dir} has no {RESULTS} (an unfinished run? rerun it to finish)")
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}:{getattr(exc, 'lineno', 1)}: malformed JSON "
                           f"({getattr(exc, 'msg', type(exc).__name__)})") from None
    if not isinstance(res, dict):
        raise ResultsError(f"{path}: not a JSON object")
    missing = [k for k in ("model", "methods", "task", "metrics") if k not in res]
    if missing:
        raise ResultsError(f"{path}: missing keys {missing} (schema_version {res.get('schema_version')})")
    if res.get("schema_version", 1) > SCHEMA_VERSION:
        raise ResultsError(f"{path}: schema_version {res['schema_version']} is newer than this hallufix reads "
                           f"({SCHEMA_VERSION}) — upgrade hallufix")
    over = res.setdefault("overhead", {}) or {}
    for key in ("baseline", "baseline_wall_s_per_sample", "ratio", "ratio_iqr"):
        over.setdefault(key, None)
    res["overhead"] = over
    res.setdefault("execution", {"world_size": None, "ranks": None, "schedule": None})
    return res
