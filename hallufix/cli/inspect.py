"""``hallufix inspect`` (attention figures for one image or averaged over a task) and
``hallufix analyze layer-masking`` (accuracy with visual tokens hidden at one layer at a time)."""
from __future__ import annotations

from pathlib import Path

from hallufix.cli import CliError


def register(sub) -> None:
    p = sub.add_parser("inspect", help="attention figures: head matrix, per-layer maps, drift curves, on vs off",
                       epilog="example: hallufix inspect --image cat.jpg --question 'is there a cat ?' "
                              "--plugins clva --output inspect/")
    p.add_argument("--model", default=None)
    p.add_argument("--image", default=None, help="an image file (or use --task to average over samples)")
    p.add_argument("--question", default=None)
    p.add_argument("--task", default=None, help="average over the first --samples samples of a task")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--plugins", default=None, help="a method stack: also draw the maps with it on")
    p.add_argument("--layers", default=None, help="layers to draw maps for (default: all)")
    p.add_argument("--lambda-vis", type=float, default=1.0, help="head-split width for the thresholds")
    p.add_argument("--output", required=True)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(handler=_inspect)

    a = sub.add_parser("analyze", help="layer-wise analyses (layer-masking)")
    asub = a.add_subparsers(dest="analysis", metavar="ANALYSIS")
    m = asub.add_parser("layer-masking", help="accuracy when visual tokens are hidden from one layer at a time",
                        epilog="example: hallufix analyze layer-masking --task shapes-pope --limit 100 --output lm/")
    m.add_argument("--model", default=None)
    m.add_argument("--task", default="shapes-pope")
    m.add_argument("--limit", type=int, default=200)
    m.add_argument("--batch-size", type=int, default=16)
    m.add_argument("--output", required=True)
    m.set_defaults(handler=_layer_masking)


def _load(model):
    from hallufix.api import Session
    from hallufix.models.loading import ModelNotAvailableError

    try:
        return Session.load(model)
    except ModelNotAvailableError as exc:
        raise CliError(str(exc)) from None


def _inputs(args):
    from hallufix.tasks import get_task
    from hallufix.tasks.base import TaskError

    if args.task:
        try:
            samples = get_task(args.task).samples()[: args.samples]
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
    from hallufix.config import ConfigError, split_overrides
    from hallufix.inspect_report import write_inspection
    from hallufix.plugins import PluginError, split_plugins

    images, questions = _inputs(args)
    session = _load(args.model)
    stack = split_plugins(args.plugins)
    per_method, rest = split_overrides(list(args.overrides), stack)
    if rest:
        raise CliError(f"unknown overrides {rest}; method keys look like clva.alpha=10")
    try:
        index = write_inspection(session, images, questions, Path(args.output), stack, per_method,
                                 lambda_vis=args.lambda_vis, layers=args.layers)
    except (ConfigError, PluginError) as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {index}")
    return 0


def _layer_masking(args) -> int:
    from hallufix.inspect_report import layer_masking

    session = _load(args.model)
    out = Path(args.output)
    try:
        result = layer_masking(session, args.task, out, limit=args.limit, batch_size=args.batch_size)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    print(f"baseline accuracy {result['baseline']:.4f}")
    for i, acc in enumerate(result["accuracy"]):
        print(f"  layer {i:>2}: {acc:.4f} ({acc - result['baseline']:+.4f})")
    print(f"suggested fusion layers {result['suggestion']['fusion_layers']}, review layer "
          f"{result['suggestion']['review_layer']} (0-based); table and plot in {out}/")
    return 0
