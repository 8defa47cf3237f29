"""One cell run into its directory: opened (locked, checked against an earlier run, resumed), fed batches by the
schedule (:mod:`hallufix.runner.schedule`), finished once (scored, ``results.json`` written).

Layout of a run directory::

    config.yaml     the resolved run config and its identity (:mod:`hallufix.provenance`): a resume must match it
    env.json        versions, git hash, device, dtype, attention implementation, batch size, seed, world size
    samples.jsonl   one record per finished sample (strict JSON), in task order; deterministic (no timing)
    timing.jsonl    per-batch wall time, tokens, peak memory, hook counts (:mod:`hallufix.runner.timing`)
    shards/         under several ranks: samples.<rank>.jsonl and timing.<rank>.jsonl (merged at the end)
    results.json    the results schema (:mod:`hallufix.runner.results`); written once, when the run finishes
    sample_stats.json  per-sample counts a task's scorer uses (CHAIR), for the report's bootstrap
    hooks.json      fired count per hook point and which attention path each layer ran (all processes)
    .lock           held (flock) by the one process writing the directory (``.lock.<rank>`` by the other ranks)

An interrupted run keeps every finished batch; the same command resumes and produces the same metrics and the same
``samples.jsonl`` as an uninterrupted one; overhead and hook counts are recomputed from the timing logs, so they add
up over every process and a rerun of a finished run keeps them.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hallufix.errors import BatchEndFailed, NumericalError, RunDirError
from hallufix.runner import store, timing
from hallufix.runner.generate import generate_batch
from hallufix.runner.results import SCHEMA_VERSION, environment, metrics_block, overhead_block
from hallufix.runner.spec import decoding_of
from hallufix.runner.world import World
from hallufix.tasks.base import TaskError, iter_batches


class CellRun:
    """A cell being run: ``open()``, then :meth:`run_batch` for each of :attr:`todo`'s batches, then
    :meth:`finish`; :meth:`close` (also on errors) releases the directory."""

    def __init__(self, session, task, spec, out_dir: Path, *, methods=None, samples=None, drop_corrupt=False,
                 on_nonfinite: str = "stop", world: World | None = None):
        from hallufix.validate import check_samples

        self.session, self.task, self.spec, self.out_dir = session, task, spec, Path(out_dir)
        self.samples = check_samples(task, spec.limit) if samples is None else samples
        self.methods, self.drop_corrupt, self.on_nonfinite = methods, drop_corrupt, on_nonfinite
        self.world = world or World()
        self.fresh, self.done, self.todo, self.batch_todo = not self.out_dir.exists(), {}, [], []
        self._lock = None

    @property
    def rank(self) -> int | None:
        return self.world.rank if self.world.sharded else None

    # ------------------------------------------------------------------------------------------------ open
    def open(self) -> "CellRun":
        """Lock the directory, write (or check) its config, read what is finished, and plan this rank's batches."""
        from hallufix import provenance as prov
        from hallufix.intercept.guards import check_questions_fit

        name = store.LOCK if self.world.rank == 0 or not self.world.sharded else f"{store.LOCK}.{self.world.rank}"
        self._lock = store.RunLock(self.out_dir, name).acquire()
        spec, session, task = self.spec, self.session, self.task
        self.started = prov.now()
        self.run = session.start(spec.plugins, spec.overrides, methods=self.methods)
        self.run.branch_mode = spec.branch_mode
        self.ids = [s.id for s in self.samples]
        self.max_new = spec.max_new_tokens or task.max_new_tokens
        self.config = self._config()
        self.run.check_decoding(self.decoding)  # before anything is written or run
        self._write_config()
        found = store.read_records(self.out_dir, drop_corrupt=self.drop_corrupt)
        wanted = set(self.ids)
        self.done.update((k, r) for k, r in found.items() if k in wanted)
        prov.check_same_questions(self.out_dir, self.samples, self.done)
        self._tidy()
        mine = [s for b, batch in enumerate(iter_batches(self.samples, spec.batch_size)) if self.world.owns(b)
                for s in batch]
        self.todo = [s for s in mine if s.id not in self.done]
        check_questions_fit(session, self.todo, self.max_new)
        self.batch_todo = list(iter_batches(self.todo, spec.batch_size))
        self.seeds = prov.seed_everything(spec.seed)
        prov.reset_peak_memory(session.device)
        self.process = f"{os.getpid()}-{time.time_ns()}"  # one per open (a resume in the same process counts)
        return self

    def _config(self) -> dict:
        from hallufix import provenance as prov

        spec, session, task = self.spec, self.session, self.task
        self.dtype = str(next(session.model.parameters()).dtype)
        self.template = prov.prompt_template(session)
        self.files = prov.task_files(spec.task_spec or task.name, spec.task_options)
        self.generation = prov.generation_settings(self.max_new)
        self.decoding = decoding_of(spec)
        if self.decoding.strategy != "greedy":  # greedy runs keep the identity they always had (resumable)
            self.generation.update(do_sample=self.decoding.sampled, num_beams=self.decoding.num_beams,
                                   decoding=self.decoding.record())
        device = session.device.type  # the kind: cuda:0 and the cuda:<rank> of each rank are the same run
        ident = prov.identity(model=prov.model_identity(session, spec.model), methods=self.run.methods.record(),
                              task=task.name, task_options=spec.task_options, files=self.files,
                              template=self.template, questions_sha256="", generation=self.generation,
                              dtype=self.dtype, device=device, seed=spec.seed)
        ident.pop("questions_sha256")  # per-record question check instead (the hash depends on --limit)
        self.ident = ident
        config = {"model": spec.model, "task": task.name, "plugins": self.run.order,
                  "methods": self.run.methods.record(), "batch_size": spec.batch_size, "limit": spec.limit,
                  "seed": spec.seed, "max_new_tokens": self.max_new, "dtype": spec.dtype, "device": spec.device,
                  "branch_mode": spec.branch_mode, "swept": spec.swept, "task_options": spec.task_options,
                  "identity": ident,
                  "identity_hash": prov.identity_hash(ident)}
        return json.loads(store.dumps(config, default=str))

    def _write_config(self) -> None:
        import yaml

        from hallufix import provenance as prov

        cfg_path = self.out_dir / "config.yaml"
        if cfg_path.is_file():
            try:
                previous = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise RunDirError(f"{cfg_path} is unreadable ({type(exc).__name__}) — restore it, or choose "
                                  f"another --output") from None
            prov.check_same_run(self.out_dir, previous, self.config)
        if self.world.rank == 0 or not self.world.sharded:
            store.write_text(cfg_path, yaml.safe_dump(self.config, sort_keys=False))
            store.write_json(self.out_dir / "env.json", environment(self.session, self.spec, self.run.methods,
                                                                    self.world.size))

    def _tidy(self) -> None:
        """One process: ``samples.jsonl`` rewritten once (atomically) in task order with every finished record, the
        shards of an earlier multi-process launch merged in — only when it holds anything else (a torn tail, a
        dropped line, another order). One rank of several: the same for its own shard."""
        if not self.world.sharded:
            store.merge_shards(self.out_dir, self.ids, self.done)
            self.samples_path = self.out_dir / store.SAMPLES
        else:
            self.samples_path = store.shard_path(self.out_dir, self.rank)
            self.samples_path.parent.mkdir(parents=True, exist_ok=True)
            found = store.read_jsonl(self.samples_path, drop_corrupt=True, keep_aside=False)
            clean = [r for r in found if r.get("id") in self.done]
            if clean != found or not store.holds_exactly(self.samples_path, len(clean)):
                store.rewrite_jsonl(self.samples_path, clean)
        store.cut_torn_tail(timing.timing_path(self.out_dir, self.rank))

    # ------------------------------------------------------------------------------------------------ batches
    def warm_up(self) -> None:
        """One untimed, unrecorded plain ``generate`` (no methods: no plugin hook sees it) of this rank's first
        remaining sample, so the first timed batch does not pay the model's cold start (lazy kernel and allocator
        initialisation, weights paged in); nothing when nothing is left to run."""
        if self.todo:
            s = self.todo[0]
            generate_batch(self.session.start([], {}), [s], [s.load_image()], self.max_new, "record")

    def run_batch(self, batch) -> None:
        """Generate ``batch``, append its records and its timing line (fsynced)."""
        from hallufix import provenance as prov
        from hallufix.intercept.guards import PromptTooLong

        images = [s.load_image() for s in batch]
        before = {k: dict(v) for k, v in self.run.hook_stats.items()}
        _sync(self.session.device)
        t0 = time.perf_counter()
        failure = None
        try:
            outs, flagged = generate_batch(self.run, batch, images, self.max_new, self.on_nonfinite, self.decoding)
        except BatchEndFailed as exc:  # the batch was generated: keep it, then report the plugin's error
            outs, flagged, failure = exc.generations, {}, exc.original
        except PromptTooLong as exc:
            raise TaskError(f"sample(s) {', '.join(batch[r].id for r in sorted(exc.rows))}: {exc}") from None
        _sync(self.session.device)
        wall = time.perf_counter() - t0
        recs = []
        for i, (s, o) in enumerate(zip(batch, outs)):
            rec = {"id": s.id, "split": s.split, "question": s.question, "answer": s.answer, "output": o.text,
                   "parsed": self.task.parse(s, o.text), "meta": s.meta, "diagnostics": o.diagnostics}
            if o.seed is not None:  # --decoding sample: the row's generator seed
                rec["seed"] = o.seed
            if i in flagged:  # --on-nonfinite record: kept, flagged, left out of the metrics
                rec.update(output=None, parsed=None, nonfinite=flagged[i])
            bad: list[str] = []
            rec = store.strict(rec, "", bad)
            if bad:
                rec["nonfinite_fields"] = bad  # NaN/inf a plugin reported, written as null
            recs.append(rec)
        with self.samples_path.open("ab") as f:
            store.append_records(f, recs)
        self.done.update((r["id"], r) for r in recs)
        hooks = {k: _diff(self.run.hook_stats[k], before.get(k, {})) for k in self.run.hook_stats}
        line = timing.batch_line([s.id for s in batch], wall, tokens=sum(int(o.token_ids.numel()) for o in outs),
                                 peak_mem_mb=prov.peak_memory_mb(self.session.device), process=self.process,
                                 rank=self.world.rank, hooks=hooks)
        with timing.timing_path(self.out_dir, self.rank).open("ab") as log:
            store.append_records(log, [line])
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------------------------------------ finish
    def finish(self, baseline_dir: Path | None = None, schedule: str = "sequential") -> dict:
        """Merge the shards (rank 0 of a sharded run; after every rank finished), score, write ``results.json``,
        ``hooks.json`` and ``sample_stats.json`` once; the results dict. ``baseline_dir``: the baseline run of the
        same samples, for the overhead ratio."""
        from hallufix import provenance as prov

        spec, task, ids = self.spec, self.task, self.ids
        if self.world.sharded:  # every rank's records, read back from the shards
            self.done = {k: r for k, r in store.read_records(self.out_dir).items() if k in set(ids)}
        missing = [i for i in ids if i not in self.done]
        if missing:
            raise RunDirError(f"{self.out_dir}: {len(missing)} sample(s) are not finished (e.g. {missing[0]}) — a "
                              f"rank stopped early; rerun the same command to resume")
        store.merge_shards(self.out_dir, ids, self.done)
        records = [self.done[i] for i in ids if not self.done[i].get("nonfinite")]
        broken = [i for i in ids if self.done[i].get("nonfinite")]
        if not records:
            raise NumericalError(f"every sample of {self.out_dir} had non-finite logits — nothing to score; "
                                 f"{self.done[broken[0]]['nonfinite']}")
        scores = task.score(records)
        counts: dict[str, int] = {"all": len(records)}
        for r in records:
            counts[r["split"]] = counts.get(r["split"], 0) + 1
        m = timing.measurements(self.out_dir, set(ids))
        vs = timing.overhead_vs(self.out_dir, baseline_dir, set(ids))
        session, template = self.session, self.template
        results = {
            "schema_version": SCHEMA_VERSION, "run_id": self.out_dir.name, "model": {
                "id": spec.model, "family": session.info.family, "dtype": self.dtype,
                "attn_implementation": session.adapter.get_text_attn_implementation(session.model)},
            "methods": self.run.methods.record(),
            "task": {**getattr(task, "record", dict)(), "name": task.name, "n": len(records)},
            "swept": spec.swept, "seed": spec.seed, "decoding": self.decoding.record(),
            "metrics": metrics_block(task, scores, counts),
            "nonfinite": {"n": len(broken), "ids": broken, "excluded_from_metrics": True} if broken else None,
            "overhead": overhead_block(m, vs),
            "execution": {"world_size": self.world.size, "ranks": m["ranks"], "distribute": self.world.by,
                          "schedule": schedule},
            "identity": self.ident, "identity_hash": self.config["identity_hash"],
            "sample_ids_sha256": prov.sha256_text("\n".join(sorted(r["id"] for r in records))),
            "limit": spec.limit,
            "provenance": {"command_line": prov.command_line(), "started": self.started, "finished": prov.now(),
                           "task_spec": spec.task_spec or task.name, "task_options": spec.task_options,
                           "task_files": self.files, "questions_sha256": prov.questions_hash(self.samples),
                           "chat_template": template["chat_template"], "prompt_rendered": template["rendered"],
                           "prompt_template_sha256": template["sha256"], "generation": self.generation,
                           "model": self.ident["model"], "seeds": self.seeds, "limit": spec.limit,
                           "limit_warning": prov.limit_warning(spec.limit, len(self.samples))},
        }
        units = getattr(task, "sample_stats", None)
        if callable(units):
            store.write_json(self.out_dir / "sample_stats.json", units(records))
        store.write_json(self.out_dir / "results.json", results)
        store.write_json(self.out_dir / "hooks.json", {"declared": self.run.declarations(), "fired": m["fired"],
                                                       "paths": m["paths"]})
        return results

    def close(self) -> None:
        """Release the directory; a fresh one in which nothing finished is removed (by a single process only: under
        several ranks another rank may have finished samples there)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self.fresh and not self.done and not self.world.sharded:
            store.remove_empty_run(self.out_dir)


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def _diff(now: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}
