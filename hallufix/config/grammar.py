"""The one override grammar of ``hallufix run``, ``ablate`` and ``inspect`` (and of grid files, whose keys are the
same): every item is ``KEY=VALUE``; the key's first part says what it sets.

* ``clva.alpha=10``: a method's config key (the method must be in the stack). The value is typed by OmegaConf
  against the method's ``Config`` dataclass when the run is resolved (:func:`hallufix.config.resolve`);
* ``task.image_root=/data/val2014``: a task option (YAML-typed: ``10`` is an int, ``true`` a bool);
* ``batch_size=4``, ``limit=100``, ``seed=1``, ``max_new_tokens=8``, ``model=...``, ``task=...``, ``dtype=...``,
  ``device=...``: run settings (:data:`RUN_KEYS`);
* ``plugins=none,clva,clva+ara``: the method stacks.

**Sweeps.** A value with commas is a sweep: ``clva.alpha=10,14`` is two cells; several sweeps multiply. A value
that starts with a bracket or a quote is one value (``clva.apply_layers=[2,3]``, ``task.judge='a, b'``).

**Stacks.** ``+`` joins methods into one stack in call order (``clva+ara``); ``none`` (or ``baseline``) is the
empty stack. ``--plugins`` names one stack, so there ``,`` joins as well (``--plugins clva,ara`` is
``plugins=clva+ara``); in ``plugins=`` commas sweep like in any other key.
"""
from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass
from typing import Any, Iterable

from hallufix.config.errors import ConfigError

#: run settings and their types (range checks: :func:`hallufix.validate.run_value`).
RUN_KEYS = {"batch_size": int, "limit": int, "seed": int, "max_new_tokens": int, "model": str, "task": str,
            "dtype": str, "device": str}
STACK_KEY = "plugins"
BASELINE = ("none", "baseline", "")


@dataclass(frozen=True)
class Item:
    """One ``KEY=VALUE`` item: the key as typed and its values (more than one: a sweep axis)."""

    key: str
    values: tuple[str, ...]

    @property
    def head(self) -> str:
        """The part before the first dot (``clva`` of ``clva.alpha``)."""
        return self.key.partition(".")[0]

    @property
    def rest(self) -> str:
        """The part after the first dot (``alpha`` of ``clva.alpha``; empty for run keys)."""
        return self.key.partition(".")[2]

    @property
    def scope(self) -> str:
        """``"plugins"``, ``"run"``, ``"task"``, ``"method"`` or ``"unknown"`` (a dotless key that is no run key)."""
        if self.key == STACK_KEY:
            return "plugins"
        if self.key in RUN_KEYS:
            return "run"
        if self.rest:
            return "task" if self.head == "task" else "method"
        return "unknown"

    @property
    def swept(self) -> bool:
        return len(self.values) > 1


def split_values(value: str) -> list[str]:
    """``"10,14"`` -> ``["10", "14"]``; a value starting with a bracket or a quote is never split."""
    if "," in value and not value.strip().startswith(("[", "{", "'", '"')):
        return value.split(",")
    return [value]


def parse_item(text: str) -> Item:
    """``"clva.alpha=10,14"`` -> ``Item("clva.alpha", ("10", "14"))``; :class:`ConfigError` without ``=``."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. clva.alpha=10)")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key before '=' (e.g. clva.alpha=10)")
    return Item(key, tuple(split_values(value)))


def parse_items(items: Iterable[str]) -> dict[str, Item]:
    """Items by key, in typed order; a key given twice keeps the last value (as a shell user expects)."""
    out: dict[str, Item] = {}
    for text in items:
        item = parse_item(text)
        out.pop(item.key, None)
        out[item.key] = item
    return out


def check_key(item: Item) -> None:
    """:class:`ConfigError` for a key no scope takes, with the closest run key."""
    if item.scope != "unknown":
        return
    close = difflib.get_close_matches(item.key, list(RUN_KEYS) + [STACK_KEY], n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown config key '{item.key}'.{hint} Run keys: {', '.join(sorted(RUN_KEYS))}; "
                      f"method keys look like clva.alpha=10, task options like task.image_root=DIR")


def parse_stack(spec: Any) -> list:
    """One stack: ``"clva+ara"`` / ``"clva,ara"`` / ``["clva", "ara"]`` -> ``["clva", "ara"]``; ``none``,
    ``baseline``, empty and ``None`` -> ``[]``. Non-string entries (method objects) are kept as they are."""
    if spec is None:
        return []
    if isinstance(spec, str):
        items: list = spec.replace("+", ",").split(",")
    else:
        items = list(spec)
    names = [s.strip() if isinstance(s, str) else s for s in items if not isinstance(s, str) or s.strip()]
    return [] if names in ([], ["none"], ["baseline"]) else names


def stack_label(stack: list) -> str:
    """A stack as override text: ``["clva", "ara"]`` -> ``"clva+ara"``, ``[]`` -> ``"none"``."""
    return "+".join(map(str, stack)) or "none"


def typed(value: str) -> Any:
    """YAML typing of a value without a schema (task options, swept values in directory names): ``"10"`` -> 10,
    ``"0.5"`` -> 0.5, ``"true"`` -> True. A value the grammar cannot read (quotes, a shell command such as
    ``python -c "..."``) stays the string typed."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]))["v"]
    except (OmegaConfBaseException, YAMLError):
        return value


def split_overrides(items: list[str], method_names: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Split ``["clva.alpha=10", "batch_size=4"]`` into per-method overrides (``{"clva": ["alpha=10"]}``) and the
    rest, unchanged."""
    per_method: dict[str, list[str]] = {n: [] for n in method_names}
    rest: list[str] = []
    for text in items:
        item = parse_item(text)
        if item.scope == "method" and item.head in per_method:
            per_method[item.head].append(f"{item.rest}={text.split('=', 1)[1]}")
        else:
            rest.append(text)
    return per_method, rest


def expand_sweeps(items: list[str]) -> list[list[str]]:
    """Cartesian product of sweeps: ``["x=1,2", "y=3"]`` -> ``[["x=1","y=3"], ["x=2","y=3"]]``."""
    axes = [[f"{it.key}={v}" for v in it.values] for it in map(parse_item, items)]
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]
