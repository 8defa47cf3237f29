"""Plugin discovery and run-scoped activation.

Two levels (as in llm / pytest):

1. **Discovery** (:func:`discover`): every distribution with an entry point in the ``hallufix`` group names a light
   module; its ``hallufix_register_methods(register)`` hook registers lazy ``"module:Class"`` targets. No torch is
   imported. A plugin that fails to import is recorded in :attr:`Registry.errors` and hides nothing else.
2. **Activation** (:func:`activate`): ``--plugins clva,ara`` instantiates only those classes, each with its
   config as :func:`hallufix.config.resolve` resolved it before the model loaded (dataclass schema + the
   model's preset + ``name.key=value`` overrides), in a fresh pluggy
   ``PluginManager``. They are registered in *reverse* typed order because pluggy calls the last registered
   first: the typed order is the call order, and it is recorded.

One-off local plugins: ``--plugins ./my_method.py`` (or ``./my_method.py:name``) loads a file that defines
``hallufix_register_methods`` or a module-level class with a ``name`` attribute and hook implementations.

Environment: ``HALLUFIX_DISABLE_PLUGIN_AUTOLOAD=1`` skips entry points; ``HALLUFIX_LOAD_PLUGINS=dist1,dist2``
loads only those distributions.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from hallufix import hookspecs

GROUP = "hallufix"
BUILTIN_DIST = "hallufix"


class PluginError(ValueError):
    """A plugin selection or configuration problem, with the fix in the message."""


@dataclass
class MethodInfo:
    """A discovered method: ``name``, lazy ``target`` (``"module:Class"`` or a class), distribution, version."""

    name: str
    target: Any
    dist: str = "local"
    version: str = ""
    description: str = ""

    def load(self) -> type:
        from hallufix.errors import register_plugin_module

        if not isinstance(self.target, str):
            cls = self.target
        else:
            module, _, attr = self.target.partition(":")
            cls = getattr(importlib.import_module(module), attr)
        register_plugin_module(cls.__module__, self.name, self.dist)  # failures in its code name it
        return cls


#: what an analysis runs on: ``inspect`` (the captures of ``hallufix inspect``), ``task`` (``hallufix analyze NAME``)
ANALYSIS_KINDS = ("inspect", "task")


@dataclass
class AnalysisInfo:
    """A registered analysis (:mod:`hallufix.analysis`): ``name``, ``kind`` (:data:`ANALYSIS_KINDS`), lazy
    ``target`` (``"module:function"`` or the function), distribution, description."""

    name: str
    target: Any
    kind: str = "inspect"
    dist: str = "local"
    description: str = ""

    def load(self):
        if not isinstance(self.target, str):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


@dataclass
class Registry:
    """What discovery found: methods by name, and load errors by entry point."""

    methods: dict[str, MethodInfo] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: method name -> the distributions that all register it (ambiguous: refused when selected)
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    #: analyses registered through ``hallufix_register_analyses``, by name
    analyses: dict[str, "AnalysisInfo"] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.methods)

    def get(self, name: str) -> MethodInfo:
        if name in self.conflicts:
            dists = ", ".join(self.conflicts[name])
            raise PluginError(f"method '{name}' is provided by several distributions ({dists})"
                              f" — uninstall one, or choose with HALLUFIX_LOAD_PLUGINS=DIST")
        if name in self.methods:
            return self.methods[name]
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        broken = f" (plugins that failed to load: {', '.join(sorted(self.errors))})" if self.errors else ""
        raise PluginError(f"unknown plugin '{name}'.{hint} Known plugins: {', '.join(self.names()) or 'none'}{broken}")


def new_manager() -> pluggy.PluginManager:
    """A fresh plugin manager with hallufix's hookspecs."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


def _collect(registry: Registry, module: Any, dist: str, version: str) -> list[str]:
    """Add the methods ``module`` registers; returns the names it registered that a built-in already owns."""
    pm = new_manager()
    pm.register(module)
    seen: list[MethodInfo] = []

    def register(name: str, target: Any, *, description: str = "") -> None:
        seen.append(MethodInfo(name, target, dist, version, description))

    pm.hook.hallufix_register_methods(register=register)
    _collect_analyses(registry, pm, dist)
    shadowed = []
    for info in seen:
        prev = registry.methods.get(info.name)
        if prev is not None and prev.dist != info.dist:
            if prev.dist == BUILTIN_DIST:
                shadowed.append(info.name)
                continue  # a built-in wins over a plugin with the same name
            if info.dist != BUILTIN_DIST:
                # ambiguous: only runs that select this name are refused (Registry.get); the rest still work
                dists = registry.conflicts.setdefault(info.name, [prev.dist])
                if info.dist not in dists:
                    dists.append(info.dist)
                registry.errors[f"{info.name} ({info.dist})"] = (
                    f"method name '{info.name}' is also registered by {prev.dist}; uninstall one or choose with "
                    f"HALLUFIX_LOAD_PLUGINS")
                continue
        registry.methods[info.name] = info
    return shadowed


def _collect_analyses(registry: Registry, pm: pluggy.PluginManager, dist: str) -> None:
    """Add the analyses a plugin module registers (``hallufix_register_analyses``); the first name wins."""
    def register(name: str, target: Any, *, kind: str = "inspect", description: str = "") -> None:
        if kind not in ANALYSIS_KINDS:
            raise PluginError(f"analysis '{name}' ({dist}): kind must be one of {', '.join(ANALYSIS_KINDS)}, "
                              f"got {kind!r}")
        registry.analyses.setdefault(name, AnalysisInfo(name, target, kind, dist, description))

    pm.hook.hallufix_register_analyses(register=register)


def discover() -> Registry:
    """Load every ``hallufix`` entry point (fault-isolated) and collect the methods they register."""
    registry = Registry()
    if os.environ.get("HALLUFIX_DISABLE_PLUGIN_AUTOLOAD") == "1":
        return registry
    allow = os.environ.get("HALLUFIX_LOAD_PLUGINS")
    allowed = None if allow is None else {d.strip() for d in allow.split(",") if d.strip()}
    eps = sorted(entry_points(group=GROUP), key=lambda ep: (ep.dist.name != BUILTIN_DIST if ep.dist else True,
                                                             ep.name))
    for ep in eps:
        dist = ep.dist.name if ep.dist else "unknown"
        if allowed is not None and dist not in allowed and dist != BUILTIN_DIST:
            continue
        try:
            module = ep.load()
            for name in _collect(registry, module, dist, ep.dist.version if ep.dist else ""):
                registry.errors[f"{name} ({dist})"] = (f"method name '{name}' is a built-in method's; the built-in is "
                                                       f"used — ask the authors of {dist} to rename theirs")
        except Exception as exc:  # a broken plugin must not hide the others
            registry.errors[f"{ep.name} ({dist})"] = f"{type(exc).__name__}: {exc}"
    return registry


def load_local(spec: str, registry: Registry) -> MethodInfo:
    """Load a one-off plugin from ``path.py`` or ``path.py:name`` and add it to ``registry``."""
    path_s, _, wanted = spec.partition(".py:") if ".py:" in spec else (spec, "", "")
    path = Path(path_s if path_s.endswith(".py") else path_s + ".py")
    if not path.is_file():
        raise PluginError(f"local plugin file not found: {path}")
    mod_name = f"hallufix_local_{path.stem}"
    from hallufix.errors import register_plugin_module

    register_plugin_module(mod_name, path.stem, f"local:{path}")
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise PluginError(f"local plugin {path}:{exc.lineno}: syntax error ({exc.msg}) — fix the file") from None
    except Exception as exc:
        raise PluginError(f"local plugin {path} failed to import: {type(exc).__name__}: {exc} — fix the file or "
                          f"install what it imports") from None
    before = set(registry.methods)
    builtins = {n for n, m in registry.methods.items() if m.dist == BUILTIN_DIST}
    if hasattr(module, "hallufix_register_methods"):
        shadowed = _collect(registry, module, f"local:{path}", "")
        new = [n for n in registry.methods if n not in before or registry.methods[n].dist == f"local:{path}"]
    else:
        classes = [v for v in vars(module).values() if isinstance(v, type) and isinstance(getattr(v, "name", None), str)
                   and v.__module__ == mod_name]
        shadowed = [c.name for c in classes if c.name in builtins]
        for cls in classes:
            if cls.name not in builtins:
                registry.methods[cls.name] = MethodInfo(cls.name, cls, f"local:{path}", "")
        new = [c.name for c in classes if c.name not in builtins]
    if shadowed and not new:
        raise PluginError(f"{path} defines method '{shadowed[0]}', which is the name of a built-in method — rename "
                          f"it (e.g. name = \"my-{shadowed[0]}\") so the two can be told apart")
    if wanted:
        return registry.get(wanted)
    if len(new) != 1:
        raise PluginError(f"{path} defines {len(new)} methods ({', '.join(new) or 'none'}); select one with "
                          f"{path}:NAME")
    return registry.methods[new[0]]


@dataclass
class ActiveMethods:
    """The methods of one run: instances in typed order, their infos and resolved configs, the plugin manager, and
    the :class:`~hallufix.config.ResolvedMethod` s they were built from."""

    pm: pluggy.PluginManager
    instances: list[Any]
    infos: list[MethodInfo]
    configs: list[Any]
    resolved: tuple = ()

    @property
    def order(self) -> list[str]:
        return [i.name for i in self.infos]

    def record(self) -> list[dict]:
        """JSON-ready description: name, distribution, version, resolved config, in call order."""
        from omegaconf import OmegaConf

        return [{"name": i.name, "dist": i.dist, "version": i.version,
                 "config": OmegaConf.to_container(OmegaConf.structured(c)) if c is not None else {}}
                for i, c in zip(self.infos, self.configs)]


def split_plugins(spec: str | list[str] | None) -> list[str]:
    """``"clva,ara"`` / ``"clva+ara"`` / ``["clva", "ara"]`` / ``None`` -> ``["clva", "ara"]`` (empty and ``none`` =
    baseline): the stack grammar of :func:`hallufix.config.grammar.parse_stack`."""
    from hallufix.config.grammar import parse_stack

    return parse_stack(spec)


def _is_local(name: str) -> bool:
    return name.endswith(".py") or ".py:" in name


def activate(methods: Any, *, family: str | None = None, overrides: dict[str, list[str]] | None = None,
             registry: Registry | None = None, model: Any = None) -> ActiveMethods:
    """Instantiate a stack (typed order = call order) in a fresh plugin manager.

    ``methods`` is what :func:`hallufix.config.resolve` put in a cell (a sequence of
    :class:`~hallufix.config.ResolvedMethod`): each is built with its config as resolved, nothing is resolved
    again. Names, file plugins and method objects (with ``overrides``: ``{method_name: ["key=value", ...]}``) go
    through the same :func:`hallufix.config.resolve_methods` first; ``model`` (a
    :class:`~hallufix.config.ModelIdentity` or a ``--model`` string) and ``family`` pick the presets.
    """
    from hallufix.config.resolution import resolve_methods

    resolved = resolve_methods(methods, overrides, model=model, family=family, registry=registry)
    pm = new_manager()
    instances, infos, configs = [], [], []
    for rm in resolved:
        instances.append(rm.build())  # a raise in the method's __init__ is attributed to the plugin
        infos.append(rm.info)
        configs.append(rm.config)
    for inst, info in reversed(list(zip(instances, infos))):
        pm.register(inst, name=info.name)
    pm.check_pending()
    return ActiveMethods(pm, instances, infos, configs, tuple(resolved))
