"""``hallufix inspect`` (attention figures for one image or averaged over a task) and
``hallufix analyze layer-masking`` (accuracy with visual tokens hidden at one layer at a time)."""
from __future__ import annotations

from pathlib import Path

from hallufix.cli import CliError


def register(sub) -> None:
    p = sub.add_parser("inspect", help="attention figures: head matrix, per-layer maps, drift curves, on vs off",
                       epilog="example: hallufix inspect --image cat.jpg --question 'is there a cat ?' "
                              "--plugins clva --output inspect/")
    _model_options(p)
    p.add_argument("--image", default=None, help="an image file (or use --task to average over samples)")
    p.add_argument("--question", default=None, help="the question asked about --image")
    p.add_argument("--task", default=None,
                   help="task NAME or NAME:PATH: average over its first --samples samples (task options as "
                        "task.KEY=VALUE, as for run)")
    p.add_argument("--samples", type=int, default=100, help="samples of --task to average over (default 100)")
    p.add_argument("--plugins", default=None, help="a method stack: also draw the maps with it on (default: off only)")
    p.add_argument("--layers", default=None, help="layers to draw maps for, e.g. 0,4-7 (default: all)")
    p.add_argument("--lambda-vis", type=float, default=1.0,
                   help="head-split width: mean ± λ·std per layer (default 1.0)")
    p.add_argument("--output", required=True, help="folder for index.md, figures (PNG, PDF, SVG) and numbers")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="method keys (clva.alpha=10) and task options (task.image_root=DIR), as for run "
                        "(one value each: no sweeps)")
    p.set_defaults(handler=_inspect)

    a = sub.add_parser("analyze", help="layer-wise analyses (layer-masking)")
    asub = a.add_subparsers(dest="analysis", metavar="ANALYSIS")
    m = asub.add_parser("layer-masking", help="accuracy when visual tokens are hidden from one layer at a time",
                        epilog="example: hallufix analyze layer-masking --task shapes-pope --limit 100 --output lm/")
    _model_options(m)
    m.add_argument("--task", default="shapes-pope", help="a yes/no task NAME or NAME:PATH (default shapes-pope)")
    m.add_argument("--limit", type=int, default=200, help="first N samples with answers (default 200)")
    m.add_argument("--batch-size", type=int, default=16, help="rows per generate call (default 16)")
    m.add_argument("--output", required=True, help="folder for layer_masking.{csv,json,png,pdf,svg}")
    m.add_argument("overrides", nargs="*", metavar="task.KEY=VALUE", help="task options, as for run")
    m.set_defaults(handler=_layer_masking)


def _model_options(p) -> None:
    p.add_argument("--model", default=None, help="alias, hub id or local folder (default: the built-in model)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default auto)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")


def _resolve(args, *, methods: bool = True):
    """``--model``, ``--plugins`` and the ``key=value`` items through the same :func:`hallufix.config.resolve` as
    ``run``: one configuration (no sweeps), task options as ``task.KEY=VALUE``, method keys typed against each
    method's config with this model's preset — all checked before the model loads. Run keys (``limit=``, ...)
    belong to ``run`` / ``ablate`` and are refused here."""
    from hallufix.config import ConfigError, resolve
    from hallufix.config.grammar import parse_item

    items = list(args.overrides or [])
    for text in items:
        item = parse_item(text)
        if item.scope in ("run", "plugins") or (item.scope == "method" and not methods):
            what = "task.KEY=VALUE options" if not methods else "method keys (clva.alpha=10) and task.KEY=VALUE"
            raise CliError(f"'{text}' is not an option of this command: it takes {what}; "
                           f"give the model and methods with --model / --plugins")
    try:
        return resolve(items, settings={"model": args.model, "task": getattr(args, "task", None)},
                       plugins=getattr(args, "plugins", None), one_cell=True).cells[0]
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def _load(args):
    from hallufix.api import Session
    from hallufix.models.loading import ModelNotAvailableError
    from hallufix.validate import check_device, check_dtype

    check_dtype(args.dtype)
    check_device(args.device)
    try:
        return Session.load(args.model, dtype=args.dtype, device=args.device)
    except ModelNotAvailableError as exc:
        raise CliError(str(exc)) from None


def _inputs(args, task_options: dict):
    from hallufix.cli.run import _make_task
    from hallufix.tasks.base import TaskError

    if args.task:
        try:
            samples = _make_task(args.task, task_options).samples()[: args.samples]
            return [s.load_image() for s in samples], [s.question for s in samples]
        except TaskError as exc:
            raise CliError(str(exc)) from None
    if not (args.image and args.question):
        raise CliError("give --image and --question, or --task to average over samples")
    from hallufix.tasks.base import Sample

    if not Path(args.image).is_file():
        raise CliError(f"image not found: {args.image}")
    return [Sample("--image", args.question, args.image).load_image()], [args.question]  # names a corrupt file


def _inspect(args) -> int:
    from hallufix.config import ConfigError
    from hallufix.inspect_report import write_inspection
    from hallufix.plugins import PluginError

    cell = _resolve(args)
    images, questions = _inputs(args, cell.spec.task_options)
    session = _load(args)
    try:
        index = write_inspection(session, images, questions, Path(args.output), list(cell.methods), {},
                                 lambda_vis=args.lambda_vis, layers=args.layers)
    except (ConfigError, PluginError) as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {index}")
    return 0


def _layer_masking(args) -> int:
    from hallufix.analysis import run_task_analysis

    task_options = _resolve(args, methods=False).spec.task_options
    from hallufix.cli.run import _make_task

    _make_task(args.task, task_options)  # a wrong task or option fails before the model loads
    session = _load(args)
    out = Path(args.output)
    try:
        result = run_task_analysis("layer-masking", session, args.task, out, limit=args.limit,
                                   batch_size=args.batch_size, task_options=task_options)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    print(f"baseline accuracy {result['baseline']:.4f}")
    for i, acc in enumerate(result["accuracy"]):
        print(f"  layer {i:>2}: {acc:.4f} ({acc - result['baseline']:+.4f})")
    print(f"suggested fusion layers {result['suggestion']['fusion_layers']}, review layer "
          f"{result['suggestion']['review_layer']} (0-based); table and plot in {out}/")
    return 0
