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
    p.add_argument("--branch-mode", choices=("rows", "separate"), default=None,
                   help="branches a method declares 'auto' (VCD's default): rows = extra rows of the main batch "
                        "(one forward), separate = their own forwards and KV cache (default: each branch's own "
                        "rule, auto = rows); recorded in config.yaml")
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


def _flags(args) -> dict:
    """The run settings given as flags (they win over a grid file's)."""
    return {key: getattr(args, key) for key in ("model", "task", "batch_size", "limit", "seed", "max_new_tokens",
                                                "dtype", "device")}


def _run(args) -> int:
    from hallufix.config import resolve

    return _execute(args, resolve(args.overrides, settings=_flags(args), plugins=args.plugins,
                                  baseline=not args.no_baseline))


def _ablate(args) -> int:
    from hallufix.config import resolve
    from hallufix.config.grammar import parse_item

    if args.grid and "=" in args.grid and not Path(args.grid).is_file():  # `ablate task.seed=0,1`: no grid file
        args.overrides = [args.grid, *args.overrides]
        args.grid = None
    if args.grid and not Path(args.grid).is_file():
        raise CliError(f"grid file not found: {args.grid}")
    if not args.grid and not any(parse_item(o).swept for o in args.overrides):
        raise CliError("nothing to sweep: give a grid file or key=a,b,c overrides")
    return _execute(args, resolve(args.overrides, grid=args.grid, settings=_flags(args), plugins=args.plugins))


def _execute(args, resolution) -> int:
    """Run the resolved cells: every check that needs no weights first (:func:`_preflight`), then load the model
    once and hand the cells, with their methods as resolved, to the runner; print what it wrote."""
    from hallufix.plugins import activate
    from hallufix.runner import Job, run_cells
    from hallufix.runner.world import current, shutdown

    from hallufix.decoding.cli import decoding_from_args

    base = resolution.settings
    decoding = decoding_from_args(args)
    for cell in resolution.cells:  # every cell (the baseline too) decodes the same way
        cell.spec.decoding = decoding
        cell.spec.branch_mode = args.branch_mode
    world = current(base.get("device"))
    try:
        samples, out_root = _preflight(args, resolution)
        if any(c.spec.limit is not None for c in resolution.cells) and world.rank == 0:
            limit = next(c.spec.limit for c in resolution.cells if c.spec.limit is not None)
            print(f"hallufix: warning: --limit {limit}: results cover the first {limit} samples only and are not "
                  f"comparable with published full-set numbers (recorded in results.json)", file=sys.stderr)
        session = _load({**base, "device": world.device(base.get("device"))})
        _check_identity(resolution, session)
        world.barrier()  # every rank loaded (and checked its locks) before any rank opens a directory
        jobs = []
        for i, cell in enumerate(resolution.cells):
            task, cell_samples = samples[_task_key(cell.spec)]
            methods = activate(cell.methods) if world.owns_cell(i) else None
            jobs.append(Job(task, cell.spec, out_root / cell.name, methods, cell_samples))
        results = run_cells(session, jobs, world=world, progress=not args.quiet,
                            drop_corrupt=args.drop_corrupt_lines, on_nonfinite=args.on_nonfinite)
        if world.size > 1:
            world.barrier()  # rank 0 has merged and scored: every results.json is written
            if world.rank != 0:
                return 0
            from hallufix.runner import read_results

            results = [read_results(j.out_dir) for j in jobs]
    finally:
        shutdown()
    for job, res in zip(jobs, results):
        if res.get("nonfinite"):
            print(f"hallufix: warning: {res['nonfinite']['n']} sample(s) of {job.out_dir} had non-finite logits and "
                  f"are left out of its metrics (ids in results.json 'nonfinite'; samples.jsonl says where)",
                  file=sys.stderr)
    _print_summary([(job.cell, job.out_dir, res) for job, res in zip(jobs, results)], out_root)
    return 0


def _check_identity(resolution, session) -> None:
    """The loaded weights must be the ones the configs were resolved for (their presets)."""
    want, got = resolution.model, session.identity
    if want.family is not None and (want.family, want.checkpoint) != (got.family, got.checkpoint):
        from hallufix.config import ConfigError

        raise ConfigError(f"the configs were resolved for {want.checkpoint} ({want.family}) but {got.checkpoint} "
                          f"({got.family}) loaded — check --model")


def _task_key(spec) -> tuple:
    return (tuple(sorted((k, repr(v)) for k, v in spec.task_options.items())), spec.limit)


def _preflight(args, resolution):
    """The checks :func:`hallufix.config.resolve` leaves (it did run settings, stacks and method configs): device
    and dtype, the tasks' files and samples (one task per distinct set of task options), the output folder and
    its locks. Returns ``({(task options, limit): (task, samples)}, out_root)``."""
    from hallufix.experiment import default_output
    from hallufix.runner.store import check_unlocked
    from hallufix.validate import check_device, check_dtype, check_output, check_samples

    base = resolution.settings
    check_dtype(base.get("dtype"))
    check_device(base.get("device"))
    samples: dict = {}
    tasks: dict = {}
    for cell in resolution.cells:
        key = _task_key(cell.spec)
        if key[0] not in tasks:
            tasks[key[0]] = _make_task(base["task"], cell.spec.task_options)
        if key not in samples:
            samples[key] = (tasks[key[0]], check_samples(tasks[key[0]], cell.spec.limit))
    from hallufix.decoding.cli import decoding_from_args

    out_root = Path(args.output) if args.output else default_output(base["model"], base["task"],
                                                                    decoding_from_args(args))
    check_output(out_root)
    for cell in resolution.cells:
        check_unlocked(out_root / cell.name)
    return samples, out_root


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
    """Print the runs' metrics and overhead as the runner wrote them (nothing is written here)."""
    from hallufix.report_summary import summary_table

    print(summary_table(results), file=sys.stdout)
    print(f"\nrun directories under {out_root}/ (`hallufix report {out_root}/*` for CSV / Markdown / LaTeX tables; "
          f"rerunning the same command reuses the finished samples)")
