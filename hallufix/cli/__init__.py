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
import traceback


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
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error too (anywhere on the line; or HALLUFIX_DEBUG=1)")
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
    """Run one verb; the error boundary of the whole CLI.

    User errors (bad input, data, plugin failures, environment) print ``hallufix: error: <what> — <fix>`` and
    return 2 (the traceback too with ``--debug`` or ``HALLUFIX_DEBUG=1``); internal bugs print the traceback and ask
    for a report (status 1); a closed pipe (``hallufix score ... | head``) ends quietly; Ctrl-C returns 130."""
    from hallufix import errors

    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:cut] or errors.debug_enabled()
    argv = [a for i, a in enumerate(argv) if not (a == "--debug" and i < cut)]
    try:
        return _dispatch(argv)
    except CliError as exc:
        return _user_error(str(exc), exc, debug)
    except KeyboardInterrupt as exc:
        hint = errors.progress_hint(exc)
        print(f"hallufix: interrupted{hint or ''}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except SystemExit:
        raise
    except Exception as exc:  # the boundary: classify, never crash with a bare traceback for a user error
        if _is_broken_pipe(exc):
            _quiet_stdout()
            return 0
        message = errors.describe(exc)
        if message is not None:
            return _user_error(message, exc, debug)
        traceback.print_exc()
        print(f"hallufix: internal error: {type(exc).__name__}: {exc} — this is a bug in hallufix; please report it "
              f"with the traceback above and the command line", file=sys.stderr)
        return 1


def _dispatch(argv: list[str]) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may sit anywhere among the options (`--plugins clva clva.alpha=10 --task T task.x=1`);
    # argparse only collects the first run of positionals, so the rest are added here
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides or []) + extra
    elif extra:
        parser.parse_args(argv)  # the usual error message and exit status for what is really unrecognised
    if args.version:
        from hallufix.cli._version import print_versions

        return print_versions()
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    return int(args.handler(args) or 0)


def _user_error(message: str, exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc)
    print(f"hallufix: error: {message}", file=sys.stderr)
    return 2


def _is_broken_pipe(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, BrokenPipeError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _quiet_stdout() -> None:
    """After the reader of a pipe went away: point stdout at /dev/null so the interpreter's final flush is silent."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # pytest's captured stdout has no real file descriptor
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
