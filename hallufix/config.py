"""Configuration: schemas in code (dataclasses), presets in YAML, ``key=value`` overrides, ``key=a,b`` sweeps.

OmegaConf does the merging in struct mode, so an unknown key fails before any model loads, naming the key and
the closest known one. No Hydra.

Method configs resolve as: the method class's ``Config`` dataclass defaults -> the method's family preset
(``<method package>/presets/<family>.yaml``, else one shared with a sibling family such as ``qwen.yaml``, if
present; the paper setting per model family; it says only what differs from the defaults) -> user overrides
``name.key=value``.
"""
from __future__ import annotations

import difflib
import itertools
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException


class ConfigError(ValueError):
    """A bad configuration key or value, with the fix in the message."""


def preset_path(cls: type, family: str | None, preset: str | None = None, model: str | None = None) -> Path | None:
    """The YAML preset for ``cls``: the named ``preset``, else one for the ``model`` alias (e.g. ``builtin``), else
    one for the ``family``, else one the family shares with a sibling (``qwen.yaml`` for Qwen2-VL and Qwen2.5-VL;
    :func:`hallufix.models.families.preset_names`), if the method ships it."""
    module = sys.modules.get(cls.__module__)
    if module is None or not getattr(module, "__file__", None):
        return None
    folder = Path(module.__file__).parent / "presets"
    from hallufix.models.families import preset_names

    for name in [preset, model, *preset_names(family)]:
        if name and (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    return None


def _known_keys(schema) -> list[str]:
    return [f.name for f in fields(schema)] if is_dataclass(schema) else []


def apply_overrides(base, items: list[str], where: str):
    """Merge ``key=value`` strings into the OmegaConf ``base`` (struct mode), with did-you-mean errors."""
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{where}: override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        try:
            parsed = OmegaConf.from_dotlist([f"{key}={value}"])
            base = OmegaConf.merge(base, parsed)
        except ConfigKeyError:
            known = [str(k) for k in base.keys()]
            close = difflib.get_close_matches(key.split(".")[0], known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: unknown config key '{key}'.{hint} Known keys: {', '.join(known)}") from None
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{where}: bad value for '{key}': {value!r} ({exc.msg if hasattr(exc, 'msg') else exc})"
                              ) from None
    return base


def method_config(cls: type, *, family: str | None = None, overrides: list[str] = (), preset: str | None = None,
                  model: str | None = None):
    """Resolve a method's config object (an instance of ``cls.Config``) or ``None`` if it has no schema."""
    schema = getattr(cls, "Config", None)
    if schema is None:
        if overrides:
            raise ConfigError(f"method '{getattr(cls, 'name', cls.__name__)}' takes no config; got {list(overrides)}")
        return None
    conf = OmegaConf.structured(schema)
    OmegaConf.set_struct(conf, True)
    where = f"method '{getattr(cls, 'name', cls.__name__)}'"
    path = preset_path(cls, family, preset, model)
    if path is not None:
        try:
            conf = OmegaConf.merge(conf, OmegaConf.load(path))
        except ConfigKeyError as exc:
            raise ConfigError(f"{where}: preset {path} has an unknown key: {exc}") from None
    conf = apply_overrides(conf, list(overrides), where)
    obj = OmegaConf.to_object(conf)
    from hallufix.validate import check_finite

    check_finite(obj, where, getattr(cls, "name", cls.__name__))  # NaN / inf never reach a method
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return obj


def split_overrides(items: list[str], method_names: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Split ``["clva.alpha=10", "batch_size=4"]`` into per-method overrides and run-level overrides."""
    per_method: dict[str, list[str]] = {n: [] for n in method_names}
    rest: list[str] = []
    for item in items:
        head = item.split("=", 1)[0].split(".", 1)[0]
        if head in per_method and "." in item.split("=", 1)[0]:
            per_method[head].append(item.split(".", 1)[1])
        else:
            rest.append(item)
    return per_method, rest


def expand_sweeps(items: list[str]) -> list[list[str]]:
    """Cartesian product of ``key=a,b,c`` sweeps: ``["x=1,2", "y=3"]`` -> ``[["x=1","y=3"], ["x=2","y=3"]]``.

    A value in brackets or quotes is never split (``layers=[1,2]``)."""
    axes = []
    for item in items:
        key, _, value = item.partition("=")
        if "," in value and not value.strip().startswith(("[", "{", "'", '"')):
            axes.append([f"{key}={v}" for v in value.split(",")])
        else:
            axes.append([item])
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]


def parse_layers(spec: Any, num_layers: int) -> list[int]:
    """Layer selections as written in configs: ``5``, ``[3, 4]``, ``"10-15"``, ``"10:"``, ``"all"``,
    negative indices from the end. Returns sorted 0-based indices, validated against ``num_layers``."""
    if spec is None:
        return []
    if isinstance(spec, int):
        items = [spec]
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = list(spec)
    out: set[int] = set()
    for it in items:
        if isinstance(it, int):
            out.add(it if it >= 0 else num_layers + it)
        elif it == "all":
            out.update(range(num_layers))
        elif ":" in it or "-" in it.lstrip("-"):
            sep = ":" if ":" in it else "-"
            a, b = it.split(sep, 1)
            lo = int(a) if a else 0
            hi = (int(b) + (1 if sep == "-" else 0)) if b else num_layers
            out.update(range(lo, hi))
        else:
            i = int(it)
            out.add(i if i >= 0 else num_layers + i)
    bad = [i for i in out if not 0 <= i < num_layers]
    if bad:
        raise ConfigError(f"layer indices {sorted(bad)} out of range for a model with {num_layers} layers (0-based)")
    return sorted(out)
