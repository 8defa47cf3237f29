"""Experiments: one run, a baseline-vs-stack comparison, or an ablation grid, planned from the override grammar
(:mod:`hallufix.config.grammar`) or a YAML grid file. Pure planning here (no torch, no methods):
:func:`plan` expands settings and items into :class:`~hallufix.runner.RunSpec` cells;
:func:`hallufix.config.resolve` adds each cell's resolved methods before any model loads.

A grid file holds the same keys as the command line::

    model: builtin
    task: shapes-pope
    limit: 200
    grid:
      plugins: [none, clva, clva+ara]
      clva.alpha: [10, 14]
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hallufix.config.errors import ConfigError
from hallufix.config.grammar import RUN_KEYS, Item, check_key, parse_items, parse_stack, stack_label, typed
from hallufix.runner.spec import RunSpec
from hallufix.validate import run_value

__all__ = ["Plan", "RUN_KEYS", "cell_dirname", "default_output", "fixed_settings", "load_grid", "method_label", "plan"]


@dataclass
class Plan:
    """The cells of an experiment and the shared settings: ``task_options`` go to the task constructor."""

    cells: list[RunSpec] = field(default_factory=list)
    task_options: dict[str, Any] = field(default_factory=dict)


def load_grid(path: str | Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Read a grid YAML: ``(fixed settings, {key: [values]})``. Top-level dotted keys (``clva.alpha: 10``) are fixed
    overrides (one-value axes). Malformed, non-UTF-8 or badly shaped files and unknown top-level keys raise
    :class:`ConfigError` naming the file (and line)."""
    import yaml

    from hallufix.validate import check_grid

    path = Path(path)
    try:
        conf = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}) — save the grid file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{at}: malformed YAML ({getattr(exc, 'problem', None) or exc}) — fix the file"
                          ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read grid file {path}: {exc.strerror} — check the path") from None
    conf = {} if conf is None else conf
    check_grid(conf, path)
    grid = conf.pop("grid", None) or {}
    axes = {str(k): [_as_text(x) for x in (v if isinstance(v, list) else [v])] for k, v in grid.items()}
    for key in [k for k in conf if "." in k]:
        axes.setdefault(key, [_as_text(conf.pop(key))])
    return conf, axes


def _as_text(value: Any) -> str:
    """A YAML scalar back to override text (``True`` -> ``true``, so the typed parse gives a bool again)."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def plan(base: dict[str, Any], items: list[str], plugins: str | None = None,
         extra_axes: dict[str, list[str]] | None = None) -> Plan:
    """Expand settings + override items (+ grid axes) into cells.

    :param base: fixed settings (``model``, ``task``, run keys, a grid file's fixed ``plugins``).
    :param items: command-line ``key=value`` strings (commas sweep; :mod:`hallufix.config.grammar`).
    :param plugins: the ``--plugins`` stack (``clva,ara`` = ``clva+ara``).
    :param extra_axes: a grid file's axes, ``{key: [values]}``; items given on the command line win.
    """
    axes: dict[str, Item] = {k: Item(k, tuple(v)) for k, v in (extra_axes or {}).items()}
    axes.update(parse_items(items))
    if plugins is not None and "plugins" not in axes:
        axes["plugins"] = Item("plugins", (stack_label(parse_stack(plugins)),))
    axes.setdefault("plugins", Item("plugins", (str(base.get("plugins", "none")),)))
    for item in axes.values():
        check_key(item)
    out = Plan()
    keys = list(axes)
    seen = set()
    for combo in itertools.product(*(axes[k].values for k in keys)):
        spec = _cell(base, axes, dict(zip(keys, combo)))
        ident = (tuple(spec.plugins), tuple(sorted((k, tuple(v)) for k, v in spec.overrides.items())),
                 tuple(sorted((k, str(v)) for k, v in spec.task_options.items())),
                 spec.batch_size, spec.limit, spec.seed, spec.max_new_tokens)
        if ident in seen:
            continue
        seen.add(ident)
        out.cells.append(spec)
    if out.cells:
        out.task_options = dict(out.cells[0].task_options)  # the fixed ones (shared by every cell)
    return out


def _cell(base: dict[str, Any], axes: dict[str, Item], setting: dict[str, str]) -> RunSpec:
    """One combination of axis values as a :class:`RunSpec` (a swept key of a method outside its stack does not
    apply to it; :func:`plan` drops the duplicates that leaves)."""
    stack = parse_stack(setting.pop("plugins"))
    spec = RunSpec(plugins=stack)
    for k, v in base.items():
        if k in RUN_KEYS and v is not None:
            setattr(spec, k, run_value(k, v))
    swept: dict[str, Any] = {}
    for key, value in setting.items():
        item = axes[key]
        if item.scope == "run":
            setattr(spec, key, run_value(key, value))
        elif item.scope == "task":
            spec.task_options[item.rest] = typed(value)  # per cell: task.seed=0,1 is two cells
        else:
            if item.head not in stack:
                if item.swept:
                    continue  # a swept key of a method that is not in this cell's stack
                raise ConfigError(f"override '{key}' names method '{item.head}', which is not in the stack "
                                  f"{stack or ['baseline']} — add it with --plugins or drop the override")
            spec.overrides.setdefault(item.head, []).append(f"{item.rest}={value}")
        if item.swept:
            swept[key] = typed(value)
    if axes["plugins"].swept:
        swept["plugins"] = spec.stack
    spec.swept = swept
    spec.task_spec = spec.task
    return spec


def method_label(name: str) -> str:
    """A stack entry as a package would name it: a file plugin ``path/my_method.py[:Class]`` -> ``my_method``
    (``Class`` when given), so its directory is neither hidden nor path-shaped."""
    if name.endswith(".py") or ".py:" in name:
        path, _, wanted = name.partition(".py:") if ".py:" in name else (name[:-3], "", "")
        return wanted or Path(path).name
    return name


def fixed_settings(spec: RunSpec) -> dict[str, Any]:
    """What distinguishes a cell beyond its stack and swept keys: fixed method overrides, fixed task options and
    non-default run settings that change samples (seed, max_new_tokens, dtype)."""
    fixed: dict[str, Any] = {}
    for method, items in sorted(spec.overrides.items()):
        for item in items:
            key = f"{method}.{item.split('=', 1)[0]}"
            if key not in spec.swept:
                fixed[key] = item.split("=", 1)[1]
    for k, v in sorted(spec.task_options.items()):
        if f"task.{k}" not in spec.swept:
            fixed[f"task.{k}"] = v
    for k, default in (("seed", 0), ("max_new_tokens", None), ("dtype", "auto")):
        if getattr(spec, k) != default and k not in spec.swept:
            fixed[k] = getattr(spec, k)
    return fixed


def cell_dirname(spec: RunSpec, names: dict[str, str] | None = None) -> str:
    """A stable, readable, unique directory name for a cell: the stack (file plugins named like packages, or by
    ``names``: stack entry -> method name), the swept keys, and — when the cell has fixed settings that change its
    samples (:func:`fixed_settings`) — ``-h`` plus a short hash of them, so two runs with different fixed
    overrides never share a directory (``clva-h1a2b3c``)."""
    import hashlib
    import json

    names = names or {}
    stack = "+".join(names.get(p) or method_label(p) for p in spec.plugins) or "baseline"
    parts = [stack]
    for k, v in sorted(spec.swept.items()):
        if k != "plugins":
            parts.append(f"{k}={v}")
    name = re.sub(r"[^A-Za-z0-9_.=+,-]", "_", "_".join(parts)).lstrip(".")
    fixed = fixed_settings(spec)
    if fixed:
        name += "-h" + hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return name


def default_output(model: str, task: str, decoding=None) -> Path:
    """``runs/<model>-<task>`` (``-<strategy>`` added for a non-greedy :class:`~hallufix.decoding.Decoding`, e.g.
    ``-beam5``, ``-sample``, so a beam run's baseline never meets the greedy one's): deterministic, so rerunning
    the same command resumes it."""
    slug = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(s).name if "/" in s else s)  # noqa: E731
    tail = ""
    if decoding is not None and decoding.strategy != "greedy":
        tail = f"-beam{decoding.num_beams}" if decoding.strategy == "beam" else f"-{decoding.strategy}"
        if decoding.strategy == "sample" and (decoding.temperature, decoding.top_p) != (1.0, 1.0):
            tail += f"-t{decoding.temperature:g}-p{decoding.top_p:g}"
    return Path("runs") / f"{slug(model)}-{slug(task)}{tail}"
