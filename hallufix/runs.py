"""Run directories: one per (model, task, method stack, config), written as the run goes, resumable.

Layout of a run directory::

    config.yaml     the resolved run config and its identity (:mod:`hallufix.provenance`): a resume must match it
    env.json        versions, git hash, device, dtype, attention implementation, batch size, seed
    samples.jsonl   one record per finished sample (strict JSON), appended and fsynced after every batch
    batches.jsonl   one line per finished batch: its ids, wall seconds, generated tokens, hook counts
    results.json    schema-versioned metrics with their direction, method order, overhead per sample and token,
                    peak memory, identity and provenance (command line, times, task options and file hashes,
                    chat template, generation settings, seeds); written at the end
    sample_stats.json  per-sample counts a task's scorer uses (CHAIR), for the report's bootstrap
    hooks.json      fired count per hook point and which attention path each layer ran (all processes)
    .lock           held (flock) by the one process writing the directory

An interrupted run (killed, Ctrl-C, crash) keeps every finished batch; the same command resumes from
``samples.jsonl`` and produces the same ``results.json`` metrics as an uninterrupted run; overhead and hook counts
come from ``batches.jsonl``, so they add up over every process and a rerun of a finished run keeps them. Reading
and writing go through :mod:`hallufix.rundir`.
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

from hallufix import rundir
from hallufix.errors import BatchEndFailed, NumericalError, RunDirError, note_progress
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
    task_options: dict[str, Any] = field(default_factory=dict)  # recorded in the identity (the task is built
    task_spec: str | None = None                                 # from them by the caller); ``NAME[:PATH]``
    decoding: Any = None  # a hallufix.decoding.Decoding (None: greedy); its seed is ``seed``

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
    rundir.write_json(path, obj)


def read_samples(path: Path, *, drop_corrupt: bool = False) -> list[dict]:
    """Finished records of a (possibly interrupted) run; a torn last line from a kill is dropped, a corrupt line
    elsewhere is refused (or, with ``drop_corrupt``, dropped and redone); see :mod:`hallufix.rundir`."""
    return rundir.read_jsonl(path, drop_corrupt=drop_corrupt)


def metrics_block(task: Task, scores: dict[str, dict[str, Any]], counts: dict[str, int]) -> dict:
    """``{split: {metric: {value, higher_is_better, n}}}`` from a task's scores.

    A metric the task does not declare in :attr:`Task.metrics` gets ``higher_is_better: null`` (never a guessed
    direction) and is listed under ``undeclared``. A task may score a metric as a dict ``{"value": None,
    "partial": "why"}`` (an MME total over an incomplete set of subtasks): the extra keys are kept."""
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


def execute(session, task: Task, spec: RunSpec, out_dir: Path, *, methods=None, progress: bool = True,
            on_batch=None, samples: list | None = None, drop_corrupt: bool = False,
            on_nonfinite: str = "stop") -> dict:
    """Run (or resume) ``spec`` on ``task`` with ``session`` into ``out_dir``; return the results dict.

    :param methods: an already activated :class:`~hallufix.plugins.ActiveMethods` (else built from ``spec``).
    :param on_batch: optional callback ``(n_done, n_total)`` after each batch (tests use it to interrupt).
    :param samples: the task's samples as already checked by :func:`hallufix.validate.check_samples` (else read).
    :param drop_corrupt: drop corrupt middle lines of ``samples.jsonl`` (kept aside) instead of refusing.
    :param on_nonfinite: ``"stop"`` (default): non-finite logits stop the run naming the method and layer;
        ``"record"``: such samples are recorded with ``output: null`` and a ``nonfinite`` message, left out of the
        metrics and listed under ``results["nonfinite"]``.

    Holds ``out_dir``'s writer lock throughout. An exception escaping the run carries how many samples are
    finished (:func:`hallufix.errors.note_progress`); a fresh directory in which nothing finished is removed.
    """
    from hallufix.validate import check_samples, check_spec

    check_spec(spec)
    samples = check_samples(task, spec.limit) if samples is None else samples
    fresh = not out_dir.exists()
    done: dict = {}
    try:
        with rundir.RunLock(out_dir):
            return _execute_locked(session, task, spec, out_dir, methods, progress, on_batch, samples, drop_corrupt,
                                   done, on_nonfinite)
    except BaseException as exc:
        note_progress(exc, out_dir, len(done), len(samples))
        if fresh and not done:
            rundir.remove_empty_run(out_dir)
        raise


def _generate(run, batch, images, max_new: int, on_nonfinite: str, decoding=None):
    """One batch: ``(generations, {row: message})``. Non-finite logits stop the run with the method and layer that
    produced them (:mod:`hallufix.intercept.guards`); with ``on_nonfinite="record"`` the batch is redone one row at a
    time and the rows that still break are returned flagged (their message says where) instead."""
    import torch

    from hallufix.api import Generation
    from hallufix.intercept.guards import NonFiniteLogits, describe_nonfinite, locate_nonfinite

    questions = [s.question for s in batch]
    try:
        return run.generate(images, questions, max_new_tokens=max_new, decoding=decoding,
                            row_keys=[s.id for s in batch]), {}
    except NonFiniteLogits as exc:
        info = locate_nonfinite(run, images, questions, exc.rows, exc.step)
        dtype = str(next(run.session.model.parameters()).dtype)
        message = describe_nonfinite(info, [batch[r].id for r in exc.rows], run.order, dtype)
        if on_nonfinite != "record":
            raise NumericalError(message + " (or --on-nonfinite record to flag such samples and go on)") from None
    outs, flagged = [], {}
    for i, (image, question) in enumerate(zip(images, questions)):
        try:
            outs.extend(run.generate([image], [question], max_new_tokens=max_new, decoding=decoding,
                                     row_keys=[batch[i].id]))
        except NonFiniteLogits:
            outs.append(Generation("", torch.zeros(0, dtype=torch.long)))
            flagged[i] = message
    return outs, flagged


def _execute_locked(session, task, spec, out_dir, methods, progress, on_batch, samples, drop_corrupt, done,
                    on_nonfinite) -> dict:
    import torch
    import yaml
    from tqdm import tqdm

    from hallufix.intercept.guards import PromptTooLong, check_questions_fit

    from hallufix import provenance as prov

    started = prov.now()
    run = session.start(spec.plugins, spec.overrides, methods=methods)
    ids = [s.id for s in samples]
    max_new = spec.max_new_tokens or task.max_new_tokens
    dtype = str(next(session.model.parameters()).dtype)
    template = prov.prompt_template(session)
    files = prov.task_files(spec.task_spec or task.name, spec.task_options)
    generation = prov.generation_settings(max_new)
    decoding = decoding_of(spec)
    if decoding.strategy != "greedy":  # greedy runs keep the identity they always had (resumable)
        generation.update(do_sample=decoding.sampled, num_beams=decoding.num_beams, decoding=decoding.record())
    ident = prov.identity(model=prov.model_identity(session, spec.model), methods=run.methods.record(),
                          task=task.name, task_options=spec.task_options, files=files, template=template,
                          questions_sha256="", generation=generation, dtype=dtype, device=str(session.device),
                          seed=spec.seed)
    ident.pop("questions_sha256")  # per-record question check below (the hash depends on --limit)
    config = {"model": spec.model, "task": task.name, "plugins": run.order, "methods": run.methods.record(),
              "batch_size": spec.batch_size, "limit": spec.limit, "seed": spec.seed, "max_new_tokens": max_new,
              "dtype": spec.dtype, "device": spec.device, "swept": spec.swept, "task_options": spec.task_options,
              "identity": ident, "identity_hash": prov.identity_hash(ident)}
    config = json.loads(rundir.dumps(config, default=str))
    cfg_path = out_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            previous = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{cfg_path} is unreadable ({type(exc).__name__}) — restore it, or choose another "
                              f"--output") from None
        prov.check_same_run(out_dir, previous, config)
    rundir.write_text(cfg_path, yaml.safe_dump(config, sort_keys=False))
    rundir.write_json(out_dir / "env.json", environment(session, spec, run.methods))

    samples_path = out_dir / rundir.SAMPLES
    wanted = set(ids)
    found = read_samples(samples_path, drop_corrupt=drop_corrupt)
    done.update((r["id"], r) for r in found if r.get("id") in wanted)
    prov.check_same_questions(out_dir, samples, done)
    clean = [done[i] for i in ids if i in done]
    if clean != found or not rundir.holds_exactly(samples_path, len(clean)):  # torn / dropped / foreign lines:
        # rewrite once (atomically); else leave the file alone
        rundir.rewrite_jsonl(samples_path, clean)
    rundir.cut_torn_tail(out_dir / rundir.BATCHES)
    todo = [s for s in samples if s.id not in done]
    check_questions_fit(session, todo, max_new)
    seeds = prov.seed_everything(spec.seed)
    prov.reset_peak_memory(session.device)
    process = f"{os.getpid()}-{time.time_ns()}"  # one per execute call (a resume in the same process counts)
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc=f"{spec.stack} on {task.name}",
               disable=not progress, unit="q")
    with samples_path.open("ab") as f, (out_dir / rundir.BATCHES).open("ab") as log:
        for batch in iter_batches(todo, spec.batch_size):
            images = [s.load_image() for s in batch]
            before = {k: dict(v) for k, v in run.hook_stats.items()}
            t0 = time.perf_counter()
            failure = None
            try:
                outs, flagged = _generate(run, batch, images, max_new, on_nonfinite, decoding)
            except BatchEndFailed as exc:  # the batch was generated: keep it, then report the plugin's error
                outs, flagged, failure = exc.generations, {}, exc.original
            except PromptTooLong as exc:
                raise TaskError(f"sample(s) {', '.join(batch[r].id for r in sorted(exc.rows))}: {exc}") from None
            wall = time.perf_counter() - t0
            peak = prov.peak_memory_mb(session.device)
            recs = []
            for i, (s, o) in enumerate(zip(batch, outs)):
                recs.append({"id": s.id, "split": s.split, "question": s.question, "answer": s.answer,
                             "output": o.text, "parsed": task.parse(s, o.text), "meta": s.meta,
                             "diagnostics": o.diagnostics})
                if o.seed is not None:  # --decoding sample: the row's generator seed
                    recs[-1]["seed"] = o.seed
                if i in flagged:  # --on-nonfinite record: kept, flagged, left out of the metrics
                    recs[-1].update(output=None, parsed=None, nonfinite=flagged[i])
                bad: list[str] = []
                recs[-1] = rundir.strict(recs[-1], "", bad)
                if bad:
                    recs[-1]["nonfinite_fields"] = bad  # NaN/inf a plugin reported, written as null
            rundir.append_records(f, recs)
            done.update((r["id"], r) for r in recs)
            rundir.append_records(log, [{"ids": [s.id for s in batch], "wall_s": wall, "process": process,
                                         "tokens": sum(int(o.token_ids.numel()) for o in outs), "peak_mem_mb": peak,
                                         **{k: _diff(run.hook_stats[k], before.get(k, {})) for k in run.hook_stats}}])
            if failure is not None:
                raise failure
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(len(done), len(samples))
    bar.close()
    records = [done[i] for i in ids if not done[i].get("nonfinite")]
    broken = [i for i in ids if done[i].get("nonfinite")]
    if not records:
        raise NumericalError(f"every sample of {out_dir} had non-finite logits — nothing to score; "
                             f"{done[broken[0]]['nonfinite']}")
    scores = task.score(records)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["split"]] = counts.get(r["split"], 0) + 1
    counts["all"] = len(records)
    m = rundir.measurements(out_dir, set(ids))
    results = {
        "schema_version": SCHEMA_VERSION, "run_id": out_dir.name, "model": {
            "id": spec.model, "family": session.info.family, "dtype": str(next(session.model.parameters()).dtype),
            "attn_implementation": session.adapter.get_text_attn_implementation(session.model)},
        "methods": run.methods.record(),
        "task": {**getattr(task, "record", dict)(), "name": task.name, "n": len(records)},  # + file versions etc.
        "swept": spec.swept, "seed": spec.seed, "decoding": decoding_of(spec).record(),
        "metrics": metrics_block(task, scores, counts),
        "nonfinite": {"n": len(broken), "ids": broken, "excluded_from_metrics": True} if broken else None,
        "overhead": {"wall_s_per_sample": (m["wall_s"] / m["samples"]) if m["samples"] else None,
                     "wall_s_per_token": (m["wall_s"] / m["tokens"]) if m["tokens"] else None,
                     "tokens_per_sample": (m["tokens"] / m["samples"]) if m["samples"] else None,
                     "peak_mem_mb": m.get("peak_mem_mb"), "samples_timed": m["samples"],
                     "processes": m["processes"]},
        "identity": ident, "identity_hash": config["identity_hash"],
        "sample_ids_sha256": prov.sha256_text("\n".join(sorted(r["id"] for r in records))),
        "limit": spec.limit,
        "provenance": {"command_line": prov.command_line(), "started": started, "finished": prov.now(),
                       "task_spec": spec.task_spec or task.name, "task_options": spec.task_options,
                       "task_files": files, "questions_sha256": prov.questions_hash(samples),
                       "chat_template": template["chat_template"], "prompt_rendered": template["rendered"],
                       "prompt_template_sha256": template["sha256"], "generation": generation,
                       "model": ident["model"], "seeds": seeds, "limit": spec.limit,
                       "limit_warning": prov.limit_warning(spec.limit, len(samples))},
    }
    units = getattr(task, "sample_stats", None)
    if callable(units):
        rundir.write_json(out_dir / "sample_stats.json", units(records))
    rundir.write_json(out_dir / "results.json", results)
    rundir.write_json(out_dir / "hooks.json", {"declared": run.declarations(), "fired": m["fired"],
                                               "paths": m["paths"]})
    return results


def _diff(now: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}


def decoding_of(spec: RunSpec):
    """The run's :class:`~hallufix.decoding.Decoding`, seeded with the run's ``seed``."""
    from dataclasses import replace

    from hallufix.decoding import Decoding

    return replace(spec.decoding or Decoding(), seed=spec.seed)
