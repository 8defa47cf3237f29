"""Experiments: one run, a baseline-vs-stack comparison, or an ablation grid, from typed overrides or a YAML
grid file. Pure planning here (no torch); :func:`run_cells` executes the cells on one loaded model.

Override grammar (a Hydra subset, no Hydra):

* ``clva.alpha=10``: a method's config key (the method must be in the stack);
* ``task.image_root=/data/val2014``: a task option;
* ``batch_size=4``, ``limit=100``, ``seed=1``, ``max_new_tokens=8``: run settings;
* ``plugins=none,clva,clva+ara``: a sweep over method stacks (``+`` stacks, ``none`` is the baseline);
* any ``key=a,b,c`` is a sweep: the grid is the cartesian product; one run directory per cell.

A grid file holds the same keys::

    model: builtin
    task: shapes-pope
    limit: 200
    grid:
      plugins: [none, clva, clva+ara]
      clva.alpha: [10, 14]
"""
from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hallufix.config import ConfigError
from hallufix.runs import RunSpec
from hallufix.validate import run_value

RUN_KEYS = {"batch_size": int, "limit": int, "seed": int, "max_new_tokens": int, "model": str, "task": str,
            "dtype": str, "device": str}


@dataclass
class Plan:
    """The cells of an experiment and the shared settings: ``task_options`` go to the task constructor."""

    cells: list[RunSpec] = field(default_factory=list)
    task_options: dict[str, Any] = field(default_factory=dict)


def _stack(value: str) -> list[str]:
    value = value.strip()
    return [] if value in ("none", "baseline", "") else [v.strip() for v in value.split("+") if v.strip()]


def _axes_from_items(items: list[str]) -> dict[str, list[str]]:
    axes: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if value.strip().startswith(("[", "{", "'", '"')):
            axes[key] = [value]
        else:
            axes[key] = [v for v in value.split(",")]
    return axes


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
    """Expand settings + overrides (+ grid axes) into cells.

    :param base: fixed settings (``model``, ``task``, run keys, and ``overrides`` lists from a grid file).
    :param items: command-line ``key=value`` strings (commas sweep).
    :param plugins: the ``--plugins`` stack (commas stack here: ``clva,ara``).
    """
    axes = dict(extra_axes or {})
    axes.update(_axes_from_items(items))
    if plugins is not None and "plugins" not in axes:
        axes["plugins"] = ["+".join(p.strip() for p in plugins.split(",") if p.strip()) or "none"]
    axes.setdefault("plugins", [str(base.get("plugins", "none"))])
    out = Plan()
    keys = list(axes)
    seen = set()
    for combo in itertools.product(*(axes[k] for k in keys)):
        setting = dict(zip(keys, combo))
        stack = _stack(setting.pop("plugins"))
        spec = RunSpec(plugins=stack)
        for k, v in base.items():
            if k in RUN_KEYS and v is not None:
                setattr(spec, k, run_value(k, v))
        swept: dict[str, Any] = {}
        for key, value in setting.items():
            head, _, rest = key.partition(".")
            if key in RUN_KEYS:
                setattr(spec, key, run_value(key, value))
            elif head == "task" and rest:
                spec.task_options[rest] = _yaml_value(value)  # per cell: task.seed=0,1 is two cells
            elif rest:
                if head not in stack:
                    if len(axes[key]) > 1:
                        continue  # a swept key of a method not in this cell's stack
                    raise ConfigError(f"override '{key}' names method '{head}', which is not in the stack "
                                      f"{stack or ['baseline']}")
                spec.overrides.setdefault(head, []).append(f"{rest}={value}")
            else:
                close = difflib.get_close_matches(key, list(RUN_KEYS) + ["plugins"], n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"unknown config key '{key}'.{hint} Run keys: {', '.join(sorted(RUN_KEYS))}; "
                                  f"method keys look like clva.alpha=10, task options like task.image_root=DIR")
            if len(axes[key]) > 1:
                swept[key] = _yaml_value(value)
        if len(axes["plugins"]) > 1:
            swept["plugins"] = spec.stack
        spec.swept = swept
        spec.task_spec = spec.task
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


def _yaml_value(value: str) -> Any:
    """``"10"`` -> 10, ``"0.5"`` -> 0.5, ``"true"`` -> True, other strings unchanged (YAML typing). A value the
    override grammar cannot read (quotes, a shell command such as ``python -c "..."``) stays the string typed."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]))["v"]
    except (OmegaConfBaseException, YAMLError):
        return value


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


def default_output(model: str, task: str) -> Path:
    """``runs/<model>-<task>``: deterministic, so rerunning the same command resumes it."""
    slug = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(s).name if "/" in s else s)  # noqa: E731
    return Path("runs") / f"{slug(model)}-{slug(task)}"
