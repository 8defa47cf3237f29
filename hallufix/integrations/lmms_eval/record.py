"""hallufix's run record of an lmms-eval evaluation, in the files and writers of a ``hallufix run`` directory.

Beside lmms-eval's own output (its results and ``samples_*.jsonl``), one folder holds::

    config.yaml    the model and its identity (provenance.model_identity), method stack with each method's resolved
                   config, overrides, batch size, dtype, device, the chat template hash, lmms-eval's version
    env.json       the environment record of a hallufix run (runs.environment) plus lmms-eval's version
    samples.jsonl  one record per answered request, appended and fsynced after every batch: ``id``
                   (``task/split/doc_id``), task, split, doc_id, question, ``output`` (what lmms-eval scores: cut at
                   the first ``until`` stop string), ``raw_output``, generated tokens, generation settings and
                   each method's per-row diagnostics
    hooks.json     declared hook points per method, fired count per hook point and the attention path per layer

It is written with the run-directory writers (``hallufix.rundir``: atomic JSON/YAML, fsynced JSONL, NaN/inf written
as null and named) and the provenance helpers (``hallufix.provenance``), in the layout of a run directory's files
of the same names; it holds no ``results.json`` (the metrics are lmms-eval's). A folder that already holds answers
is refused: an lmms-eval evaluation is not resumed, and recorded answers are never overwritten (a record that
failed before its first answer is replaced).
"""
from __future__ import annotations

from pathlib import Path

from hallufix import provenance as prov
from hallufix import rundir

class RecordError(ValueError):
    """The record folder cannot be used; the message names it and the fix."""


def lmms_eval_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lmms_eval")
    except PackageNotFoundError:
        return None


class RunRecord:
    """The record folder of one lmms-eval model instance (one session, one method stack)."""

    def __init__(self, folder: Path, session, run, args, model_args: dict):
        self.folder = Path(folder)
        samples = self.folder / rundir.SAMPLES
        if samples.is_file() and samples.stat().st_size:
            raise RecordError(f"{self.folder} already holds a hallufix record with answers ({samples.name}) — give "
                              f"another record=FOLDER in --model_args, or delete that folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run = run
        self.started = prov.now()
        self._write_start(session, args, model_args)

    def _write_start(self, session, args, model_args: dict) -> None:
        import yaml

        from hallufix.runs import RunSpec, environment

        template = prov.prompt_template(session)
        methods = self.run.methods.record()
        config = {"harness": "lmms-eval", "lmms_eval": lmms_eval_version(), "model": args.pretrained,
                  "model_identity": prov.model_identity(session, args.pretrained), "plugins": self.run.order,
                  "methods": methods, "overrides": args.overrides, "batch_size": args.batch_size,
                  "dtype": args.dtype, "device": args.device, "prompt_template_sha256": template["sha256"],
                  "chat_template": template["chat_template"], "prompt_rendered": template["rendered"],
                  "model_args": {k: str(v) for k, v in sorted(model_args.items()) if v is not None},
                  "command_line": prov.command_line(), "started": self.started}
        config = prov.to_json(config)
        rundir.write_text(self.folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        spec = RunSpec(model=args.pretrained, task="lmms-eval", plugins=list(self.run.order),
                       overrides=args.overrides, batch_size=args.batch_size, dtype=args.dtype, device=args.device)
        env = environment(session, spec, self.run.methods)
        env["lmms_eval"] = lmms_eval_version()
        rundir.write_json(self.folder / "env.json", env)
        self.write_hooks()

    def append(self, records: list[dict]) -> None:
        """Append one batch's records (strict JSON: a NaN/inf a method reported is written as null and named)."""
        clean = []
        for rec in records:
            bad: list[str] = []
            rec = rundir.strict(rec, "", bad)
            if bad:
                rec["nonfinite_fields"] = bad
            clean.append(rec)
        with (self.folder / rundir.SAMPLES).open("ab") as f:
            rundir.append_records(f, clean)

    def write_hooks(self) -> None:
        stats = self.run.hook_stats
        rundir.write_json(self.folder / "hooks.json", {"declared": self.run.declarations(),
                                                       "fired": dict(stats["fired"]), "paths": dict(stats["paths"])})
