"""The ``hallufix`` command line: a thin layer over the Python API.

Each module in this package that defines ``register(subparsers)`` adds one verb (``run``, ``plugins``, ``score``,
...). Verb modules import torch and transformers lazily, inside their handlers, so ``hallufix --help`` stays fast
and leaves torch out of ``sys.modules``.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


class CliError(Exception):
    """A user error: printed as ``hallufix: error: ...`` with exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    from hallufix import __version__

    parser = argparse.ArgumentParser(
        prog="hallufix",
        description="Apply, stack, ablate and compare training-free hallucination fixes on multimodal LLMs.",
        epilog="examples:\n  hallufix run --plugins clva,ara\n  hallufix plugins --json\n"
        "  hallufix score pope --questions coco_pope_random.json --answers answers.jsonl --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print hallufix, torch, transformers and plugin versions")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if mod.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod}")
        if hasattr(module, "register"):
            module.register(sub)
    parser.set_defaults(_version=__version__)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may sit anywhere among the options (`--plugins clva clva.alpha=10 --task T task.x=1`);
    # argparse only collects the first run of positionals, so the rest are added here
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides or []) + extra
    elif extra:
        parser.parse_args(argv)  # the usual error message and exit status for what is really unrecognised
    try:
        if args.version:
            from hallufix.cli._version import print_versions

            return print_versions()
        if not getattr(args, "handler", None):
            parser.print_help()
            return 0
        return int(args.handler(args) or 0)
    except CliError as exc:
        print(f"hallufix: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hallufix: interrupted; finished samples are kept and a rerun resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
