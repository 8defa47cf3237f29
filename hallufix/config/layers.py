"""The one layer convention of every config key that names decoder layers.

Indices are **0-based** (the Hugging Face module index ``model.layers[i]``); papers count from 1 and each
method's page and preset says how it translated them. A selection is written as:

* ``5`` or ``-1`` (negative counts from the end), ``[3, 4]`` or ``"3,4"``;
* ``"10-15"``: an inclusive range (layers 10 to 15);
* ``"10:"``: from 10 to the last layer; ``":4"`` / ``"2:6"``: a Python slice (end excluded);
* ``"all"``.
"""
from __future__ import annotations

from typing import Any

from hallufix.config.errors import ConfigError


def parse_layers(spec: Any, num_layers: int) -> list[int]:
    """Layer selections as written in configs (see the module docstring). Returns sorted 0-based indices,
    validated against ``num_layers``; :class:`ConfigError` names the indices out of range."""
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
