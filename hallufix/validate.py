"""Checks that run before any weights load: run settings, method config numbers, device and dtype, the output
folder, the task's files and samples, grid files. Each failure raises ``ConfigError`` / ``TaskError`` /
``RunDirError`` with ``<what> — <how to fix>``.

Phases: CPU only, before :meth:`hallufix.api.Session.load`. torch is imported only by :func:`check_device`.
"""
from __future__ import annotations

import math
import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from hallufix.config import ConfigError

#: run keys -> (type, minimum, None allowed); the grammar's run settings (``batch_size=4`` or ``--batch-size 4``)
RUN_KEY_RULES: dict[str, tuple[type, int | None, bool]] = {
    "batch_size": (int, 1, False), "limit": (int, 1, True), "seed": (int, 0, False),
    "max_new_tokens": (int, 1, True), "model": (str, None, False), "task": (str, None, False),
    "dtype": (str, None, False), "device": (str, None, False),
}
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
#: top-level keys a grid YAML may hold (besides run keys): ``grid`` (the axes), ``plugins`` (a fixed stack) and
#: dotted method / task keys (``clva.alpha: 10``, ``task.image_root: DIR``)
GRID_KEYS = {"grid", "plugins"}


def run_value(key: str, value: Any) -> Any:
    """``value`` converted to run key ``key``'s type and range-checked, or :class:`ConfigError` naming the key."""
    typ, minimum, nullable = RUN_KEY_RULES[key]
    if value is None or (nullable and isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if nullable:
            return None
        raise ConfigError(f"{key} needs a value — e.g. {key}={minimum if minimum is not None else 'VALUE'}")
    if typ is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}={value!r} is not a whole number — give e.g. {key}={max(minimum or 0, 1)}")
        try:
            value = int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not a whole number — give e.g. {key}={max(minimum or 0, 1)}"
                              ) from None
        if minimum is not None and value < minimum:
            what = {1: "at least 1", 0: "0 or more"}[minimum]
            raise ConfigError(f"{key}={value} is out of range — it must be {what}"
                              + (" (leave it out for all samples)" if key == "limit" else "")
                              + (" (leave it out for the task's default)" if key == "max_new_tokens" else ""))
        return value
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}={value!r} must be a non-empty string")
    return value


def check_spec(spec) -> None:
    """Range-check a :class:`~hallufix.runs.RunSpec` (values from the CLI flags, grid files or the Python API)."""
    for key in ("batch_size", "limit", "seed", "max_new_tokens"):
        setattr(spec, key, run_value(key, getattr(spec, key)))
    check_dtype(spec.dtype)


def check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ConfigError(f"unsupported dtype '{dtype}' — use one of {', '.join(DTYPE_NAMES)}")


def check_device(device: str | None) -> None:
    """``cpu``, ``cuda``, ``cuda:N`` (present), ``mps`` (available); anything else is refused before loading."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"unknown device '{device}' — use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{device}' asked for, but this torch ({torch.__version__}) sees no CUDA GPU — "
                              f"use --device cpu, or install a CUDA build of torch on a machine with a GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{device}' does not exist: {torch.cuda.device_count()} CUDA device(s) — "
                              f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"device '{device}' is not available here — use --device cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device '{device}' — use cpu, cuda, cuda:N or mps")


def check_finite(obj: Any, where: str, prefix: str) -> None:
    """Refuse NaN / inf anywhere in a (dataclass) config, naming the dotted key (``clva.alpha``)."""
    def walk(value: Any, key: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {key}={value} is not a finite number — give a finite value "
                              f"(NaN and inf would silently break every output)")
        if is_dataclass(value) and not isinstance(value, type):
            for f in fields(value):
                walk(getattr(value, f.name), f"{key}.{f.name}")
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")

    if is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            walk(getattr(obj, f.name), f"{prefix}.{f.name}")
    elif obj is not None:
        walk(obj, prefix)


def check_output(path: Path) -> None:
    """The output folder can be created and written (nothing is created here)."""
    from hallufix.errors import RunDirError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--output {path} is a file, not a folder — choose a folder path")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"--output {path}: {probe} is a file, so no folder can be made under it — choose another "
                          f"path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"--output {path}: {probe} is not writable — choose a folder you can write")


def check_samples(task, limit: int | None) -> list:
    """Open and parse the task's files now (before the model loads): its samples (first ``limit``), with unique ids
    and, for samples given as paths, images that exist. Returns the samples."""
    from hallufix.tasks.base import TaskError

    samples = task.samples()
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise TaskError(f"task '{task.name}' has no samples — check its files and --limit")
    seen: dict[str, int] = {}
    dups: list[str] = []
    for s in samples:
        if s.id in seen and s.id not in dups:
            dups.append(s.id)
        seen[s.id] = seen.get(s.id, 0) + 1
    if dups:
        shown = ", ".join(repr(d) for d in dups[:5]) + (f" and {len(dups) - 5} more" if len(dups) > 5 else "")
        raise TaskError(f"task '{task.name}' has duplicate sample ids: {shown} — give every sample a unique id")
    missing = [s for s in samples if isinstance(s.image, (str, Path)) and not Path(s.image).is_file()]
    if missing:
        s = missing[0]
        more = f" ({len(missing)} images missing in all)" if len(missing) > 1 else ""
        raise TaskError(f"image not found: {s.image} (sample {s.id}){more} — point the task at the folder holding "
                        f"the images (e.g. task.image_root=/path/to/val2014)")
    return samples


def check_grid(conf: Any, path: Path) -> None:
    """A grid file's shape and keys: a mapping; ``grid`` a mapping of key -> value or list; known top-level keys."""
    if not isinstance(conf, dict):
        raise ConfigError(f"{path}: a grid file is a YAML mapping (model:, task:, grid: ...), not a "
                          f"{type(conf).__name__} — see configs/ablations/ for examples")
    unknown = [k for k in conf if not isinstance(k, str)
               or (k not in RUN_KEY_RULES and k not in GRID_KEYS and "." not in k)]
    if unknown:
        import difflib

        close = difflib.get_close_matches(str(unknown[0]), list(RUN_KEY_RULES) + sorted(GRID_KEYS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{path}: unknown top-level key '{unknown[0]}'.{hint} — known: "
                          f"{', '.join(sorted(RUN_KEY_RULES) + sorted(GRID_KEYS))}, and method/task keys "
                          f"(clva.alpha, task.image_root)")
    grid = conf.get("grid")
    if grid is not None and not isinstance(grid, dict):
        raise ConfigError(f"{path}: 'grid' must map keys to lists of values (grid: {{clva.alpha: [10, 14]}}), not a "
                          f"{type(grid).__name__}")
    for k, v in (grid or {}).items():
        values = v if isinstance(v, list) else [v]
        if not values:
            raise ConfigError(f"{path}: grid key '{k}' has no values — give at least one")
        bad = [x for x in values if isinstance(x, (dict, list))]
        if bad:
            raise ConfigError(f"{path}: grid key '{k}' holds a nested {type(bad[0]).__name__} — list plain values")
