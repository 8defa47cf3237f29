"""Configuration: one grammar, one resolution, before any model loads.

* :mod:`.grammar` — the ``KEY=VALUE`` override grammar of ``run``, ``ablate``, ``inspect`` and grid files: typed
  method keys (``clva.alpha=10``), task options (``task.KEY=VALUE``), run keys, sweeps (``a,b,c``), stacks
  (``clva+ara``; ``--plugins clva,ara``).
* :mod:`.layers` — the one layer convention (0-based; ``5``, ``"2-4"``, ``"5:"``, ``"all"``).
* :mod:`.identity` — the canonical model identity (family + checkpoint id from ``config.json``): every alias and
  path of the same weights gives the same key.
* :mod:`.presets` — method presets looked up by that identity.
* :mod:`.methods` — a method's config object: ``Config`` defaults -> preset -> overrides (OmegaConf struct
  mode, did-you-mean errors) -> ``validate()``.
* :mod:`.resolution` — :func:`resolve`: argv or a grid file -> frozen cells x (method, config object).
"""
from __future__ import annotations

from hallufix.config.errors import ConfigError
from hallufix.config.grammar import RUN_KEYS, expand_sweeps, parse_stack, split_overrides, typed
from hallufix.config.identity import ModelIdentity, identify, identify_loaded
from hallufix.config.layers import parse_layers
from hallufix.config.methods import apply_overrides, method_config
from hallufix.config.presets import preset_path
from hallufix.config.resolution import Cell, Resolution, ResolvedMethod, check_given, resolve, resolve_methods

__all__ = ["Cell", "ConfigError", "ModelIdentity", "RUN_KEYS", "Resolution", "ResolvedMethod", "apply_overrides",
           "check_given", "expand_sweeps", "identify", "identify_loaded", "method_config", "parse_layers",
           "parse_stack", "preset_path", "resolve", "resolve_methods", "split_overrides", "typed"]
