"""``hallufix calibrate fhi``: place FHI-CCR's thresholds on a model's prompts and write them into a preset file.

The prompt set (model, task, task options, number of prompts, target fraction) is recorded in the preset's
``calibrated_on`` key, which every run's recorded config then carries. See docs/methods/fhi.md, "Calibration".
"""
from __future__ import annotations

import sys
from pathlib import Path

from hallufix.cli import CliError

EPILOG = """examples:
  hallufix calibrate fhi task.seed=1                                 built-in model, shapes-pope dev split
  hallufix calibrate fhi --model llava-1.5 --task pope:/data/pope/coco task.image_root=/data/val2014 --limit 300 \\
      --output presets/fhi-llava.yaml
"""


def register(sub) -> None:
    import argparse

    p = sub.add_parser("calibrate", help="calibrate a method's thresholds on a model's prompts (fhi)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=["fhi"], help="the method to calibrate")
    p.add_argument("--model", default=None, help="alias, hub id or local folder (default: the built-in model)")
    p.add_argument("--task", default=None, help="task NAME or NAME:PATH giving the prompts (default: shapes-pope)")
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--fraction", type=float, default=0.064, help="share of all heads to select (default 0.064)")
    p.add_argument("--perception-share", type=float, default=0.5, help="share of the selection that is perception "
                                                                       "heads (default 0.5)")
    p.add_argument("--output", default=None, help="preset file to write (default: the method's preset for the model, "
                                                  "e.g. hallufix_fhi/presets/builtin.yaml); existing keys are kept")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per analysis batch (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default auto)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--refresh", action="store_true", help="recompute even when the calibration cache holds this "
                                                           "model + config + prompt set ($HALLUFIX_CACHE_DIR)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="task options (task.seed=1) and method keys "
                                                                    "(fhi.perc_max_layer=7, fhi.query_row=mean)")
    p.set_defaults(handler=_calibrate)


def _split(items: list[str], method: str) -> tuple[dict, list[str]]:
    """Task options and ``method``'s keys, in the override grammar of ``run`` (:mod:`hallufix.config.grammar`)."""
    from hallufix.config.grammar import parse_item, typed

    task_options, method_overrides = {}, []
    for text in items:
        item = parse_item(text)
        if item.swept:
            raise CliError(f"override '{text}': calibration uses one value per key, not a sweep")
        if item.scope == "task":
            task_options[item.rest] = typed(item.values[0])
        elif item.scope == "method" and item.head == method:
            method_overrides.append(f"{item.rest}={item.values[0]}")
        else:
            raise CliError(f"override '{text}': use task.KEY=VALUE or {method}.KEY=VALUE")
    return task_options, method_overrides


def _calibrate(args) -> int:
    from hallufix.cli.run import _load, _make_task
    from hallufix.config import ConfigError
    from hallufix.tasks.base import TaskError

    if not 0 < args.fraction < 1 or not 0 <= args.perception_share <= 1:
        raise CliError("--fraction must be in (0, 1) and --perception-share in [0, 1]")
    task_options, overrides = _split(list(args.overrides), args.method)
    task_spec = args.task or "shapes-pope"
    try:
        task = _make_task(task_spec, task_options)
        samples = task.samples()[: args.limit] if args.limit else task.samples()
    except TaskError as exc:
        raise CliError(str(exc)) from None
    if not samples:
        raise CliError(f"task '{task_spec}' gave no prompts (check its files and --limit)")
    model = args.model or "builtin"
    session = _load({"model": model, "dtype": args.dtype, "device": args.device})
    from hallufix_fhi.method import FHI

    try:
        images = [s.load_image() for s in samples]
        cal = _cached(session, model, task_spec, task_options, samples, args, overrides, lambda: FHI.calibrate(
            session, images, [s.question for s in samples], fraction=args.fraction,
            perception_share=args.perception_share, overrides=overrides,
            max_new_tokens=args.max_new_tokens or task.max_new_tokens, batch_size=args.batch_size))
    except (ConfigError, TaskError, ValueError) as exc:
        raise CliError(str(exc)) from None
    target, found = preset_target(FHI, session.info.family, session.identity, args.output)
    options = ", ".join(f"{k}={v}" for k, v in sorted(task_options.items()))
    record = (f"model {model}; task {task_spec}{' (' + options + ')' if options else ''}; {len(samples)} prompts "
              f"(the task's first {len(samples)}); fraction {args.fraction}, perception share {args.perception_share}; "
              f"query_row {cal['query_row']}")
    write_preset(target, cal, record, [f"fhi.{o}" for o in overrides], base=found)
    sel = cal["selected"]
    print(f"tau_perc {cal['tau_perc']!r}  tau_reas {cal['tau_reas']!r}  "
          f"decode: {cal['tau_perc_decode']!r} / {cal['tau_reas_decode']!r}")
    for phase in ("prefill", "last"):
        s = sel[phase]
        print(f"{phase:>7}: {s['perception_heads']:.3f} perception + {s['reasoning_heads']:.3f} reasoning heads per "
              f"prompt = {100 * s['fraction']:.2f}% of heads (per prompt {100 * s['fraction_min']:.1f}-"
              f"{100 * s['fraction_max']:.1f}%)")
    print(f"wrote {target}")
    return 0


def _cached(session, model, task_spec, task_options, samples, args, overrides, compute) -> dict:
    """``compute()`` through the calibration cache (:mod:`hallufix.calibration_cache`), keyed by the model, FHI's
    resolved probe config and the prompt set and targets; prints whether it was read or computed."""
    from hallufix.calibration_cache import CalibrationCache, code_hash, model_key
    from hallufix.config import method_config
    from hallufix.provenance import questions_hash
    from hallufix_fhi.method import FHI

    from dataclasses import asdict, is_dataclass

    cfg = method_config(FHI, overrides=list(overrides), family=session.info.family, model=session.identity)
    config = {"config": asdict(cfg) if is_dataclass(cfg) else dict(cfg),
              "code": code_hash("hallufix_fhi.calibration", "hallufix_fhi.method")}
    calibration = {"task": task_spec, "task_options": task_options, "n": len(samples),
                   "questions_sha256": questions_hash(samples), "fraction": args.fraction,
                   "perception_share": args.perception_share, "max_new_tokens": args.max_new_tokens,
                   "batch_size": args.batch_size, "dtype": str(next(session.model.parameters()).dtype)}
    cache = CalibrationCache()
    value, hit = cache.get_or_compute(model_key(session, model), "fhi", config, calibration, compute,
                                      refresh=args.refresh)
    print(f"calibration {'read from' if hit else 'computed and stored in'} the cache ({cache.root}; --refresh "
          f"recomputes)")
    return value


def preset_target(cls: type, family: str, model, output: str | None = None) -> tuple[Path, Path | None]:

    """``(file to write, preset to start it from)`` for calibrating ``cls`` on ``model`` of ``family``: ``output``
    if given, else the preset in use, unless it is one the family shares with a sibling (``qwen.yaml``): then a file of the
    family's own, which :func:`write_preset` starts from the shared one, so the sibling keeps its thresholds.
    ``model`` is the model's :class:`~hallufix.config.ModelIdentity` (or a ``--model`` string): every alias of the
    built-in model writes ``builtin.yaml``."""
    from hallufix.config.presets import as_identity, preset_path

    found = preset_path(cls, family, model=model)
    own_stem = as_identity(model).preset_stem if model is not None else None
    own = Path(sys.modules[cls.__module__].__file__).parent / "presets" / f"{family}.yaml"
    if output:
        return Path(output), None
    return (found if found is not None and found.stem in (family, own_stem) else own), found


def write_preset(path: Path, cal: dict, record: str, overrides: list[str], base: Path | None = None) -> None:
    """Merge the thresholds, the layer bounds used and the record into the YAML preset at ``path`` (or, when
    ``path`` does not exist yet, into a copy of ``base``): other keys and the file's own comments are kept, the
    generated ``#:`` header is replaced."""
    import yaml

    data, comments = {}, []
    source = path if path.is_file() else base
    if source is not None and source.is_file():
        text = source.read_text()
        data = yaml.safe_load(text) or {}
        comments = [line for line in text.splitlines() if line.startswith("#") and not line.startswith("#:")]
    data.update({"perc_max_layer": cal["perc_max_layer"], "reas_min_layer": cal["reas_min_layer"],
                 "tau_perc": cal["tau_perc"], "tau_reas": cal["tau_reas"],
                 "tau_perc_decode": cal["tau_perc_decode"], "tau_reas_decode": cal["tau_reas_decode"],
                 "calibrated_on": record})
    sel = cal["selected"]
    header = comments + [
        "#: Thresholds written by `hallufix calibrate fhi` (docs/methods/fhi.md, \"Calibration\"): quantiles of the",
        "#: pooled per-prompt S_v at prefill (tau_perc / tau_reas) and at the last decode step (*_decode).",
        f"#: On the calibration prompts: {100 * sel['prefill']['fraction']:.2f}% of heads at prefill, "
        f"{100 * sel['last']['fraction']:.2f}% at the last step. Recalibrate when the weights or prompts change."]
    if overrides:
        header.append(f"#: Method overrides during calibration: {' '.join(overrides)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False, width=120))
