"""Run directories: one per (model, task, method stack, config), written as the run goes, resumable.

Layout of a run directory::

    config.yaml     the resolved run config (model, task, plugins, per-method configs, generation settings)
    env.json        versions, git hash, device, dtype, attention implementation, batch size, seed
    samples.jsonl   one record per finished sample, appended and flushed after every batch
    results.json    schema-versioned metrics with their direction, method order, overhead; written at the end
    hooks.json      fired count per hook point and which attention path each layer ran

An interrupted run (killed, Ctrl-C, crash) keeps every finished batch; the same command resumes from
``samples.jsonl`` and produces the same ``results.json`` metrics as an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hallufix.tasks.base import Task, TaskError, iter_batches

SCHEMA_VERSION = 1


@dataclass
class RunSpec:
    """What one run is: ``plugins`` in call order, per-method ``overrides``, and the generation settings."""

    model: str = "builtin"
    task: str = "shapes-pope"
    plugins: list[str] = field(default_factory=list)
    overrides: dict[str, list[str]] = field(default_factory=dict)
    batch_size: int = 32
    limit: int | None = None
    seed: int = 0
    max_new_tokens: int | None = None
    dtype: str = "auto"
    device: str = "cpu"
    swept: dict[str, Any] = field(default_factory=dict)

    @property
    def stack(self) -> str:
        return "+".join(self.plugins) if self.plugins else "baseline"


def git_hash() -> tuple[str | None, bool | None]:
    """The commit of the hallufix checkout this runs from, and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=5)
        return (head.stdout.strip() or None), (bool(dirty.stdout.strip()) if head.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


def environment(session, spec: RunSpec, methods) -> dict:
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
        "plugins": [{"name": r["name"], "dist": r["dist"], "version": r["version"]} for r in methods.record()],
    }


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def read_samples(path: Path) -> list[dict]:
    """Finished records of a (possibly interrupted) run; a torn last line from a kill is dropped."""
    if not path.is_file():
        return []
    records, lines = [], path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # torn write of the last record: it is redone
            raise TaskError(f"{path}:{i + 1}: malformed record; delete the run directory to start over") from None
    return records


def _rewrite_clean(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def metrics_block(task: Task, scores: dict[str, dict[str, float]], counts: dict[str, int]) -> dict:
    """``{split: {metric: {value, higher_is_better, n}}}`` from a task's scores."""
    direction = {m.name: m.higher_is_better for m in task.metrics}
    return {split: {name: {"value": value, "higher_is_better": direction.get(name, True),
                           "n": counts.get(split, counts.get("all", 0))}
                    for name, value in metrics.items()}
            for split, metrics in scores.items()}


def execute(session, task: Task, spec: RunSpec, out_dir: Path, *, methods=None, progress: bool = True,
            on_batch=None) -> dict:
    """Run (or resume) ``spec`` on ``task`` with ``session`` into ``out_dir``; return the results dict.

    :param methods: an already activated :class:`~hallufix.plugins.ActiveMethods` (else built from ``spec``).
    :param on_batch: optional callback ``(n_done, n_total)`` after each batch (tests use it to interrupt).
    """
    import torch
    from omegaconf import OmegaConf
    from tqdm import tqdm

    run = session.start(spec.plugins, spec.overrides, methods=methods)
    samples = task.samples()
    if spec.limit is not None:
        samples = samples[: spec.limit]
    if not samples:
        raise TaskError(f"task '{task.name}' has no samples (check its files and --limit)")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise TaskError(f"task '{task.name}' has duplicate sample ids")
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"model": spec.model, "task": task.name, "plugins": run.order, "methods": run.methods.record(),
              "batch_size": spec.batch_size, "limit": spec.limit, "seed": spec.seed,
              "max_new_tokens": spec.max_new_tokens or task.max_new_tokens, "dtype": spec.dtype,
              "device": spec.device, "swept": spec.swept}
    cfg_path = out_dir / "config.yaml"
    if cfg_path.is_file():
        previous = OmegaConf.to_container(OmegaConf.load(cfg_path))
        if previous != json.loads(json.dumps(config, default=str)):
            raise TaskError(f"{out_dir} holds a run with a different config; choose another --output or delete it")
    else:
        OmegaConf.save(OmegaConf.create(json.loads(json.dumps(config, default=str))), cfg_path)
    _write_json(out_dir / "env.json", environment(session, spec, run.methods))

    samples_path = out_dir / "samples.jsonl"
    done = {r["id"]: r for r in read_samples(samples_path) if r.get("id") in set(ids)}
    _rewrite_clean(samples_path, [done[i] for i in ids if i in done])
    todo = [s for s in samples if s.id not in done]
    torch.manual_seed(spec.seed)
    t0, generated = time.perf_counter(), 0
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc=f"{spec.stack} on {task.name}",
               disable=not progress, unit="q")
    with samples_path.open("a") as f:
        for batch in iter_batches(todo, spec.batch_size):
            images = [s.load_image() for s in batch]
            outs = run.generate(images, [s.question for s in batch],
                                max_new_tokens=spec.max_new_tokens or task.max_new_tokens)
            for s, o in zip(batch, outs):
                rec = {"id": s.id, "split": s.split, "question": s.question, "answer": s.answer, "output": o.text,
                       "parsed": task.parse(s, o.text), "meta": s.meta, "diagnostics": o.diagnostics}
                done[s.id] = rec
                f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
            generated += len(batch)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(len(done), len(samples))
    bar.close()
    wall = time.perf_counter() - t0
    records = [done[i] for i in ids]
    scores = task.score(records)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["split"]] = counts.get(r["split"], 0) + 1
    counts["all"] = len(records)
    results = {
        "schema_version": SCHEMA_VERSION, "run_id": out_dir.name, "model": {
            "id": spec.model, "family": session.info.family, "dtype": str(next(session.model.parameters()).dtype),
            "attn_implementation": session.adapter.get_text_attn_implementation(session.model)},
        "methods": run.methods.record(),
        "task": {**getattr(task, "record", dict)(), "name": task.name, "n": len(records)},  # + file versions etc.
        "swept": spec.swept, "seed": spec.seed, "metrics": metrics_block(task, scores, counts),
        "overhead": {"wall_s_per_sample": (wall / generated) if generated else None, "samples_timed": generated},
    }
    _write_json(out_dir / "results.json", results)
    _write_json(out_dir / "hooks.json", {"declared": run.declarations(), **run.hook_stats})
    return results
