"""What went wrong, said once: the error types a user can cause and the classification the CLI's boundary uses.

Every exception that a user's input, data, plugin or environment can cause is turned by :func:`describe` into a
one-line ``<what> — <how to fix>`` message; anything it does not recognise is a genuine internal bug (the CLI keeps
the traceback and asks for a report). Library code raises the specific types below (or the older
``ConfigError`` / ``PluginError`` / ``TaskError`` / ``ModelNotAvailableError``, all recognised here); the runner
attaches what finished (:func:`note_progress`) so the message can say whether a rerun resumes anything.

No torch import at module level (the CLI imports this before it knows whether torch is needed).
"""
from __future__ import annotations

import errno
import os
import traceback
from pathlib import Path

#: Environment variable that makes the CLI print tracebacks for user errors too (same as ``--debug``).
DEBUG_ENV = "HALLUFIX_DEBUG"


class RunDirError(ValueError):
    """A run directory cannot be used as asked (locked by another writer, corrupt record, different config)."""


class PluginHookError(RuntimeError):
    """A method plugin raised inside one of its hooks (or its constructor): names the plugin and the hook."""

    def __init__(self, plugin: str, hook: str, original: BaseException, where: str = "", dist: str = ""):
        self.plugin, self.hook, self.original, self.where, self.dist = plugin, hook, original, where, dist
        by = f" ({dist})" if dist and dist != "hallufix" else ""
        at = f" at {where}" if where else ""
        super().__init__(f"plugin '{plugin}'{by} failed in {hook}: {type(original).__name__}: {original}{at} — "
                         f"check its settings ({plugin}.KEY=VALUE, `hallufix plugins`), or report it to the "
                         f"plugin's authors with --debug output")


class NumericalError(RuntimeError):
    """Generation produced non-finite logits (NaN/inf) for some rows; says which method/layer where it can."""


class BatchEndFailed(RuntimeError):
    """``hallufix_batch_end`` raised after the batch was generated: ``generations`` still holds the outputs so the
    runner can record them before reporting ``original``."""

    def __init__(self, generations: list, original: BaseException):
        super().__init__(str(original))
        self.generations, self.original = generations, original


# ---------------------------------------------------------------------------------------------------- progress
def note_progress(exc: BaseException, out_dir: Path, finished: int, total: int) -> None:
    """Attach "what finished" to an exception escaping a run (read back by :func:`progress_hint`)."""
    if getattr(exc, "_hallufix_progress", None) is None:
        try:
            exc._hallufix_progress = (str(out_dir), int(finished), int(total))
        except (AttributeError, TypeError):  # exceptions with __slots__
            pass


def progress_hint(exc: BaseException) -> str:
    """``"; 4 of 10 samples are finished in DIR: rerun the same command to resume"`` or ``""``."""
    info = getattr(exc, "_hallufix_progress", None)
    if not info:
        return ""
    out_dir, finished, total = info
    if finished <= 0:
        return ""
    return (f" ({finished} of {total} samples are finished in {out_dir}; after fixing this, rerun the same command "
            f"to resume)")


# ---------------------------------------------------------------------------------------------------- plugins
#: top-level module (package) of each loaded method plugin -> (method name, distribution); filled by
#: :mod:`hallufix.plugins` when a method class is imported, read to attribute an exception to a plugin.
PLUGIN_MODULES: dict[str, tuple[str, str]] = {}


def register_plugin_module(module: str, name: str, dist: str) -> None:
    """Remember that code in ``module`` (and its submodules) belongs to method ``name`` of ``dist``."""
    top = module.split(".")[0]
    PLUGIN_MODULES[module if top == "hallufix" else top] = (name, dist)


def plugin_frame(exc: BaseException) -> tuple[str, str, str, str] | None:
    """``(plugin, dist, hook, "file:line")`` when ``exc`` was raised inside a loaded plugin's code, else ``None``.

    The hook is the outermost plugin frame's function (``hallufix_attn_bias``, ``__init__``, ...); the location is
    the innermost plugin frame, where the plugin's own code raised."""
    if not PLUGIN_MODULES:
        return None
    outer = inner = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        mod = frame.f_globals.get("__name__", "")
        owner = next((v for k, v in PLUGIN_MODULES.items() if mod == k or mod.startswith(k + ".")), None)
        if owner is not None:
            if outer is None:
                outer = (owner, frame.f_code.co_name)
            inner = f"{Path(frame.f_code.co_filename).name}:{lineno}"
    if outer is None:
        return None
    (name, dist), hook = outer
    return name, dist, hook, inner or ""


# ---------------------------------------------------------------------------------------------------- classify
def _user_types() -> tuple[type, ...]:
    from hallufix.config import ConfigError
    from hallufix.plugins import PluginError
    from hallufix.tasks.base import TaskError

    types: list[type] = [ConfigError, PluginError, TaskError, RunDirError, PluginHookError, NumericalError]
    try:
        from hallufix.models.loading import ModelNotAvailableError

        types.append(ModelNotAvailableError)
    except ImportError:  # pragma: no cover (torch missing: the environment error below says so)
        pass
    try:
        from hallufix.report import ReportError

        types.append(ReportError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _os_message(exc: OSError) -> str | None:
    name = exc.filename or ""
    target = f" {name}" if name else ""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device writing{target} — free some space (or choose another --output)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied for{target} — choose a folder you can write (--output DIR) or fix its permissions"
    if exc.errno == errno.EISDIR:
        return f"{name or 'a path'} is a folder where a file was expected — point the option at a file"
    if exc.errno == errno.ENOTDIR:
        return f"{name or 'a path'}: a file stands where a folder is expected — choose another path"
    if exc.errno == errno.EEXIST and name:
        return f"{name} already exists and is not a folder — move it away or choose another --output"
    if exc.errno == errno.ENOENT and name:
        return f"file not found: {name} — check the path"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded writing{target} — free space or choose another --output"
    return None


def describe(exc: BaseException) -> str | None:
    """The user-facing one-line message for ``exc``, or ``None`` for an internal bug (keep the traceback).

    Order: hallufix's own error types; a failure inside a plugin's code (names plugin, hook and location); the
    environment (disk full, permissions, memory, missing torch); anything else is internal."""
    if isinstance(exc, BatchEndFailed):
        return describe(exc.original)
    try:
        user = _user_types()
    except ImportError:  # e.g. torch / PIL missing
        user = ()
    if user and isinstance(exc, user):
        return f"{exc}{progress_hint(exc)}"
    found = plugin_frame(exc)
    if found is not None:
        name, dist, hook, where = found
        return f"{PluginHookError(name, hook, exc, where, dist)}{progress_hint(exc)}"
    if isinstance(exc, OSError):
        msg = _os_message(exc)
        if msg:
            return msg + progress_hint(exc)
    if isinstance(exc, UnicodeDecodeError):
        name = _file_in_traceback(exc)
        return (f"{name or 'a data file'} is not UTF-8 text (byte {exc.start}: {exc.reason}) — re-save it as UTF-8"
                f"{progress_hint(exc)}")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return (f"out of memory ({type(exc).__name__}) — lower --batch-size, use --dtype bfloat16, or a smaller "
                f"model{progress_hint(exc)}")
    if isinstance(exc, ModuleNotFoundError) and exc.name in ("torch", "transformers", "PIL", "pandas"):
        return f"{exc.name} is not installed in this environment — `pip install hallufix` installs what it needs"
    return None


def _file_in_traceback(exc: BaseException) -> str | None:
    """The innermost frame's local that names an existing file (where a reader failed), if any."""
    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        for value in frame.f_locals.values():
            if isinstance(value, Path) and value.is_file():
                return str(value)
    return None


def debug_enabled() -> bool:
    """Tracebacks for user errors too (``HALLUFIX_DEBUG=1``)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "no")
