"""``hallufix run`` (one stack, compared with the baseline on the same samples) and ``hallufix ablate`` (grids)."""
from __future__ import annotations

import sys
from pathlib import Path

from hallufix.cli import CliError

EPILOG = """examples:
  hallufix run --plugins clva,ara                          built-in model + synthetic POPE, vs baseline
  hallufix run --plugins clva clva.alpha=10 --limit 50
  hallufix run --model llava-1.5 --task pope:/data/pope/coco --plugins clva task.image_root=/data/val2014
  hallufix run --plugins clva clva.alpha=10,14 clva.beta=0.5,0.9   (a sweep: one run directory per cell)
"""


def _common(p) -> None:
    p.add_argument("--model", default=None, help="alias, hub id or local folder (default: the built-in model)")
    p.add_argument("--task", default=None, help="task NAME or NAME:PATH (default: shapes-pope)")
    p.add_argument("--output", default=None, help="directory for the run(s) (default runs/<model>-<task>); "
                                                  "rerunning into the same directory resumes")
    p.add_argument("--batch-size", type=int, default=None, help="rows per generate call, at least 1 (default 32)")
    p.add_argument("--limit", type=int, default=None, help="first N samples only, at least 1 (default: all)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for python, numpy and torch, 0 or more; part of the run's identity (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation budget, at least 1 (default: the task's, e.g. POPE 16, CHAIR 512)")
    p.add_argument("--dtype", default=None, help="auto, float32, bfloat16, float16 (default auto: the checkpoint's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: a bar per run on stderr)")
    p.add_argument("--on-nonfinite", choices=("stop", "record"), default="stop",
                   help="non-finite logits (NaN/inf): stop naming the method and layer (default), or record the "
                        "sample flagged, leave it out of the metrics and go on")
    p.add_argument("--drop-corrupt-lines", action="store_true",
                   help="when a resumed samples.jsonl has corrupt lines, drop just those (kept in "
                        "samples.jsonl.dropped) and redo their samples")
    from hallufix.decoding.cli import add_decoding_flags

    add_decoding_flags(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="method keys (clva.alpha=10), task options (task.image_root=DIR), run keys; a,b,c sweeps")


def register(sub) -> None:
    p = sub.add_parser("run", help="run methods on a task (vs the baseline on the same samples)", epilog=EPILOG,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--plugins", default=None,
                   help="methods to stack, in call order: clva,ara; a file plugin: ./my_method.py (default: none, "
                        "the baseline)")
    p.add_argument("--no-baseline", action="store_true",
                   help="do not run the baseline beside the stack (default: run it, on the same samples)")
    _common(p)
    p.set_defaults(handler=_run)
    a = sub.add_parser("ablate", help="run an ablation grid from a YAML file and/or key=a,b sweeps",
                       epilog="example: hallufix ablate configs/ablations/clva-table4.yaml --limit 100")
    a.add_argument("grid", nargs="?", default=None, help="grid YAML (see configs/ablations/)")
    a.add_argument("--plugins", default=None,
                   help="a fixed stack when the grid does not sweep plugins (default: none, the baseline)")
    _common(a)
    a.set_defaults(handler=_ablate, no_baseline=True)


def _base_settings(args, fixed: dict) -> dict:
    base = dict(fixed)
    for key in ("model", "task", "batch_size", "limit", "seed", "max_new_tokens", "dtype", "device"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    base.setdefault("model", "builtin")
    base.setdefault("task", "shapes-pope")
    return base


def _run(args) -> int:
    return _execute(args, {}, {})


def _ablate(args) -> int:
    from hallufix.experiment import load_grid

    fixed, axes = ({}, {})
    if args.grid and "=" in args.grid and not Path(args.grid).is_file():  # `ablate task.seed=0,1`: no grid file
        args.overrides = [args.grid, *args.overrides]
        args.grid = None
    if args.grid:
        if not Path(args.grid).is_file():
            raise CliError(f"grid file not found: {args.grid}")
        fixed, axes = load_grid(args.grid)
    if not axes and not any("," in o for o in args.overrides):
        raise CliError("nothing to sweep: give a grid file or key=a,b,c overrides")
    return _execute(args, fixed, axes)


def _execute(args, fixed: dict, axes: dict) -> int:
    from hallufix.experiment import cell_dirname, default_output, plan
    from hallufix.plugins import activate
    from hallufix.runs import execute

    base = _base_settings(args, fixed)
    p = plan(base, list(args.overrides), args.plugins, axes)
    cells = list(p.cells)
    from hallufix.decoding.cli import decoding_from_args

    for cell in cells:  # every cell (the baseline too) decodes the same way
        cell.decoding = decoding_from_args(args)
    if not args.no_baseline and len(cells) == 1 and cells[0].plugins:
        from dataclasses import replace

        cells.insert(0, replace(cells[0], plugins=[], overrides={}, swept={}))
    registry, samples, out_root, names = _preflight(args, base, cells)
    if any(c.limit is not None for c in cells):
        limit = next(c.limit for c in cells if c.limit is not None)
        print(f"hallufix: warning: --limit {limit}: results cover the first {limit} samples only and are not "
              f"comparable with published full-set numbers (recorded in results.json)", file=sys.stderr)
    session = _load(base)
    results = []
    for cell in cells:
        methods = activate(cell.plugins, family=session.info.family, overrides=cell.overrides, registry=registry,
                           model=session.info.name)
        out_dir = out_root / cell_dirname(cell, names)
        task, cell_samples = samples[_task_key(cell)]
        res = execute(session, task, cell, out_dir, methods=methods, progress=not args.quiet,
                      samples=cell_samples, drop_corrupt=args.drop_corrupt_lines,
                      on_nonfinite=args.on_nonfinite)
        if res.get("nonfinite"):
            print(f"hallufix: warning: {res['nonfinite']['n']} sample(s) of {out_dir} had non-finite logits and are "
                  f"left out of its metrics (ids in results.json 'nonfinite'; samples.jsonl says where)",
                  file=sys.stderr)
        results.append((cell, out_dir, res))
    _print_summary(results, out_root)
    return 0


def _task_key(cell) -> tuple:
    return (tuple(sorted((k, repr(v)) for k, v in cell.task_options.items())), cell.limit)


def _preflight(args, base: dict, cells):
    """Everything that can be checked before the weights load: run settings, device and dtype, method names and
    configs, the tasks' files and samples (one task per distinct set of task options), the output folder and its
    locks. Returns ``(registry, {(task options, limit): (task, samples)}, out_root, {stack entry: method name})``."""
    from hallufix.config import method_config
    from hallufix.experiment import cell_dirname, default_output
    from hallufix.plugins import PluginError, discover, load_local
    from hallufix.rundir import check_unlocked
    from hallufix.validate import check_device, check_dtype, check_output, check_samples, check_spec

    for cell in cells:
        check_spec(cell)
    check_dtype(base.get("dtype"))
    check_device(base.get("device"))
    registry = discover()
    names: dict[str, str] = {}
    for cell in cells:  # validate names and config keys before the model loads
        if len(set(cell.plugins)) != len(cell.plugins):
            raise PluginError(f"a method is listed twice in {cell.plugins} — stack distinct methods")
        for name in cell.plugins:
            local = name.endswith(".py") or ".py:" in name
            info = load_local(name, discover()) if local else registry.get(name)  # local: a scratch registry
            try:
                cls = info.load()
            except Exception as exc:
                raise PluginError(f"plugin '{name}' ({info.dist}) failed to import: "
                                  f"{type(exc).__name__}: {exc} — reinstall it, or leave it out of --plugins"
                                  ) from None
            method_config(cls, overrides=cell.overrides.get(name, []))
            if local:
                names[name] = info.name
    samples: dict = {}
    tasks: dict = {}
    for cell in cells:
        opts = _task_key(cell)[0]
        if opts not in tasks:
            tasks[opts] = _make_task(base["task"], cell.task_options)
        if _task_key(cell) not in samples:
            samples[_task_key(cell)] = (tasks[opts], check_samples(tasks[opts], cell.limit))
    out_root = Path(args.output) if args.output else default_output(base["model"], base["task"])
    check_output(out_root)
    dirs = [cell_dirname(cell, names) for cell in cells]
    if len(set(dirs)) != len(dirs):
        dup = next(d for d in dirs if dirs.count(d) > 1)
        raise CliError(f"two cells of this experiment would share the directory {out_root / dup} — give the swept "
                       f"values distinct text")
    for d in dirs:
        check_unlocked(out_root / d)
    return registry, samples, out_root, names


def _make_task(spec: str, options: dict):
    import inspect

    from hallufix.tasks import get_task
    from hallufix.tasks.base import TaskError

    try:
        return get_task(spec, **options)
    except ValueError as exc:
        if isinstance(exc, TaskError):
            raise
        raise TaskError(f"task '{spec.split(':')[0]}': bad option value ({exc}) — check the task.KEY=VALUE options"
                        ) from None
    except TypeError as exc:
        from hallufix.tasks.base import _TASKS

        name = spec.split(":")[0]
        params = [k for k in inspect.signature(_TASKS[name]).parameters if k not in ("self", "path")]
        raise TaskError(f"task '{name}': {exc}. Task options: {', '.join(params)} (pass as task.KEY=VALUE)") from None


def _load(base: dict):
    from hallufix.api import Session
    from hallufix.models.loading import ModelNotAvailableError

    try:
        return Session.load(base["model"], dtype=base.get("dtype", "auto"), device=base.get("device", "cpu"))
    except ModelNotAvailableError as exc:
        raise CliError(str(exc)) from None


def _print_summary(results, out_root: Path) -> None:
    from hallufix.report_summary import summary_table

    from hallufix.runs import _write_json

    print(summary_table(results), file=sys.stdout)  # also fills each result's overhead ratio vs the baseline
    for _, out_dir, res in results:
        _write_json(out_dir / "results.json", res)
    print(f"\nrun directories under {out_root}/ (`hallufix report {out_root}/*` for CSV / Markdown / LaTeX tables; "
          f"rerunning the same command reuses the finished samples)")
