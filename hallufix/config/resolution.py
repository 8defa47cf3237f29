"""Resolve a run once, before any model loads: argv items (``run``, ``ablate``, ``inspect``) or a grid file ->
frozen :class:`Cell` s, each with its stack of :class:`ResolvedMethod` (method x config object).

Every configuration error is raised here — an unknown key, a bad value, a method not in the stack, a value the
method's ``validate()`` refuses given the preset of *this* model (:mod:`hallufix.config.identity`) — so a run that
resolves only fails later for what needs the loaded model (layer indices beyond its depth, shapes).

The runner consumes cells: ``cell.spec`` (:class:`~hallufix.runner.RunSpec`: the run settings, the stack as typed,
the overrides as text for provenance and directory names) and ``cell.methods``, which
:func:`hallufix.plugins.activate` instantiates as they are (nothing is resolved again).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from hallufix.config.errors import ConfigError
from hallufix.config.grammar import parse_stack
from hallufix.config.identity import ModelIdentity, identify
from hallufix.config.presets import as_identity, preset_path


@dataclass(frozen=True)
class ResolvedMethod:
    """One method of a stack with its final config.

    Attributes:
        name: the method's name (what ``--plugins`` types; a file plugin's own ``name``).
        entry: the stack entry as given (the name, ``./file.py[:name]``, or a method object).
        config: the resolved config object (an instance of the method's ``Config`` dataclass) or ``None`` when
            the method has no schema. Treat it as read-only: the method receives this object.
        overrides: the ``key=value`` items applied on top of the preset, in order.
        preset: the preset file the config started from, or ``None``.
        info: the discovery record (:class:`~hallufix.plugins.MethodInfo`: distribution, version, class).
        instance: a method object given already built (Python API); used as is.
    """

    name: str
    entry: Any
    config: Any = None
    overrides: tuple[str, ...] = ()
    preset: str | None = None
    info: Any = field(default=None, compare=False, repr=False)
    instance: Any = field(default=None, compare=False, repr=False)

    def build(self):
        """The method object: ``instance``, else the class instantiated with ``config``."""
        if self.instance is not None:
            return self.instance
        cls = self.info.load()
        return cls(self.config) if self.config is not None else cls()

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Cell:
    """One run of an experiment: ``name`` (its directory under the output root), ``spec`` (the run settings the
    runner executes and records) and ``methods`` (the stack in call order, resolved)."""

    name: str
    spec: Any
    methods: tuple[ResolvedMethod, ...]

    @property
    def stack(self) -> str:
        return self.spec.stack


@dataclass(frozen=True)
class Resolution:
    """What :func:`resolve` returns: the model's identity, the fixed settings (``model``, ``task`` and the run keys
    the experiment shares) and the cells, in order. ``task_options`` are the first cell's (each cell carries its
    own in ``cell.spec.task_options``)."""

    model: ModelIdentity
    settings: Mapping[str, Any]
    cells: tuple[Cell, ...]

    @property
    def task(self) -> str:
        return self.settings["task"]

    @property
    def task_options(self) -> dict:
        return dict(self.cells[0].spec.task_options) if self.cells else {}


def _entry_key(entry: Any) -> Any:
    return entry if isinstance(entry, str) else getattr(entry, "name", None) or type(entry).__name__


def _is_local(name: str) -> bool:
    return name.endswith(".py") or ".py:" in name


def _given(obj: Any) -> ResolvedMethod:
    from hallufix.plugins import MethodInfo

    name = getattr(obj, "name", None) or type(obj).__name__
    return ResolvedMethod(name, obj, getattr(obj, "config", None), info=MethodInfo(name, type(obj), "local", ""),
                          instance=obj)


def _one(entry: str, items: list[str], model, family, registry, cache: dict) -> ResolvedMethod:
    from hallufix.config.methods import method_config
    from hallufix.plugins import PluginError, Registry, load_local

    key = (entry, tuple(items))
    if key in cache:
        return cache[key]
    if _is_local(entry):  # loaded once per resolution, into a scratch copy: the shared registry stays as found
        if ("file", entry) not in cache:
            scratch = Registry(dict(registry.methods), dict(registry.errors), dict(registry.conflicts))
            cache[("file", entry)] = load_local(entry, scratch)
        info = cache[("file", entry)]
    else:
        info = registry.get(entry)
    try:
        cls = info.load()
    except Exception as exc:
        raise PluginError(f"plugin '{entry}' ({info.dist}) failed to import: {type(exc).__name__}: {exc} — reinstall "
                          f"it, or leave it out of --plugins") from None
    config = method_config(cls, family=family, model=model, overrides=items)
    path = preset_path(cls, family, model=model) if getattr(cls, "Config", None) is not None else None
    cache[key] = ResolvedMethod(info.name, entry, config, tuple(items), str(path) if path else None, info=info)
    return cache[key]


def resolve_methods(stack: Any, overrides: Mapping[str, Sequence[str]] | None = None, *,
                    model: ModelIdentity | str | None = None, family: str | None = None, registry=None,
                    cache: dict | None = None) -> tuple[ResolvedMethod, ...]:
    """A stack (``"clva+ara"``, a list of names, file plugins, method objects or :class:`ResolvedMethod` s) with
    per-method ``overrides`` (``{"clva": ["alpha=10"]}``) -> resolved methods, in call order.

    :param model: the model's identity (or a ``--model`` string): picks each method's preset.
    :param family: the loaded model's family, when known (wins over the identity's).
    Raises :class:`ConfigError` for overrides naming a method outside the stack or a bad value, and
    :class:`~hallufix.plugins.PluginError` for an unknown or twice-listed method."""
    from hallufix.plugins import PluginError, discover

    entries = parse_stack(stack)
    overrides = {k: list(v) for k, v in (overrides or {}).items()}
    keys = [_entry_key(e) for e in entries]
    if len(set(map(str, keys))) != len(keys):
        raise PluginError(f"a method is listed twice in {[str(k) for k in keys]}; stack distinct methods")
    model = as_identity(model)
    if registry is None and any(isinstance(e, str) for e in entries):
        registry = discover()
    cache = {} if cache is None else cache
    out, used = [], set()
    for entry in entries:
        if isinstance(entry, ResolvedMethod):
            given = overrides.get(entry.name, overrides.get(str(entry.entry)))
            if given is not None and tuple(given) != entry.overrides:
                raise ConfigError(f"method '{entry.name}' is already resolved with {list(entry.overrides)}; got "
                                  f"overrides {given} as well — resolve it with them instead")
            used.update({entry.name, str(entry.entry)})
            out.append(entry)
        elif not isinstance(entry, str):
            resolved = _given(entry)
            if overrides.get(resolved.name):
                raise ConfigError(f"method '{resolved.name}' is given as an object, so overrides "
                                  f"{overrides[resolved.name]} cannot apply — configure the object instead")
            used.add(resolved.name)
            out.append(resolved)
        else:
            items = overrides.get(entry)
            resolved = _one(entry, list(items or []), model, family, registry, cache)
            if items is None and resolved.name != entry and resolved.name in overrides:  # a file plugin by name
                resolved = _one(entry, list(overrides[resolved.name]), model, family, registry, cache)
            used.update({entry, resolved.name})
            out.append(resolved)
    stray = [k for k in overrides if k not in used and overrides[k]]
    if stray:
        raise ConfigError(f"overrides name method '{stray[0]}', which is not in the stack "
                          f"{[str(k) for k in keys] or ['baseline']} — add it to the stack or drop its overrides")
    return tuple(out)


def check_given(methods: Sequence[ResolvedMethod], plugins: Any = None,
                overrides: Mapping[str, Sequence[str]] | None = None) -> None:
    """Refuse ``plugins`` / ``overrides`` that disagree with already resolved ``methods`` (nothing is silently
    ignored: given together, they must describe the same stack)."""
    if plugins is None and not overrides:
        return
    want = [str(_entry_key(e)) for e in parse_stack(plugins)]
    have = [str(m.entry) if isinstance(m.entry, str) else m.name for m in methods]
    if plugins is not None and want != have and want != [m.name for m in methods]:
        raise ConfigError(f"methods= holds the stack {have or ['baseline']} but plugins= names {want or ['baseline']}"
                          f" — give one of them")
    by_key = {k: m for m in methods for k in (m.name, str(m.entry))}
    for key, items in (overrides or {}).items():
        m = by_key.get(key)
        if m is None and items:
            raise ConfigError(f"overrides name method '{key}', which is not in the resolved stack {have or ['baseline']}")
        if m is not None and tuple(items) != m.overrides:
            raise ConfigError(f"method '{key}' was resolved with {list(m.overrides)} but overrides= gives "
                              f"{list(items)} — resolve it again with those overrides")


def resolve(items: Sequence[str] = (), *, grid: str | Path | None = None, settings: Mapping[str, Any] | None = None,
            plugins: str | None = None, baseline: bool = False, one_cell: bool = False, registry=None,
            model: ModelIdentity | None = None) -> Resolution:
    """Argv ``items`` (``key=value``, commas sweep) and/or a ``grid`` file -> a :class:`Resolution`.

    :param settings: run settings given as flags (``model``, ``task``, ``limit``, ...); they win over the grid
        file's. Defaults: the built-in model and ``shapes-pope``.
    :param plugins: the ``--plugins`` stack (``clva,ara`` = ``clva+ara``).
    :param baseline: add a baseline cell before a single-stack experiment (``hallufix run``).
    :param one_cell: refuse sweeps (``hallufix inspect`` draws one configuration).
    :param model: the model identity, when already known (else from ``settings["model"]``)."""
    from hallufix.experiment import cell_dirname, load_grid, plan
    from hallufix.plugins import discover
    from hallufix.validate import check_spec

    fixed, axes = load_grid(grid) if grid is not None else ({}, {})
    base = {**fixed, **{k: v for k, v in (settings or {}).items() if v is not None}}
    base.setdefault("model", "builtin")
    base.setdefault("task", "shapes-pope")
    specs = list(plan(base, list(items), plugins, axes).cells)
    if one_cell and len(specs) > 1:
        swept = sorted({k for s in specs for k in s.swept})
        raise ConfigError(f"this command uses one configuration, but {', '.join(swept)} sweep{'s' if len(swept) == 1 else ''}"
                          f" over {len(specs)} — give one value each (sweeps are for run and ablate)")
    if baseline and len(specs) == 1 and specs[0].plugins:
        from dataclasses import replace

        specs.insert(0, replace(specs[0], plugins=[], overrides={}, swept={}))
    for spec in specs:
        check_spec(spec)
    ident = model or identify(base["model"])
    registry = registry if registry is not None else discover()
    cache: dict = {}
    cells, names = [], {}
    for spec in specs:
        methods = resolve_methods(spec.plugins, spec.overrides, model=ident, registry=registry, cache=cache)
        names.update({m.entry: m.name for m in methods if isinstance(m.entry, str) and _is_local(m.entry)})
        cells.append((spec, methods))
    out = tuple(Cell(cell_dirname(spec, names), spec, methods) for spec, methods in cells)
    dirs = [c.name for c in out]
    if len(set(dirs)) != len(dirs):
        dup = next(d for d in dirs if dirs.count(d) > 1)
        raise ConfigError(f"two cells of this experiment would share the directory {dup} — give the swept values "
                          f"distinct text")
    return Resolution(ident, base, out)
