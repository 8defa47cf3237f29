"""What one run is (:class:`RunSpec`), and the one place the runner reads the experiment's cells.

:func:`cell_spec` and :func:`activate_cell` are the narrow seam between planning (``hallufix.experiment`` today,
``hallufix.config.resolve()`` next) and the runner: everything in :mod:`hallufix.runner` reads a cell through them,
so a new cell type plugs in by changing these two functions only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunSpec:
    """What one run is: ``plugins`` in call order, per-method ``overrides``, and the generation settings."""

    model: str = "builtin"
    task: str = "shapes-pope"
    plugins: list[str] = field(default_factory=list)
    overrides: dict[str, list[str]] = field(default_factory=dict)
    batch_size: int = 32
    limit: int | None = None
    seed: int = 0
    max_new_tokens: int | None = None
    dtype: str = "auto"
    device: str = "cpu"
    swept: dict[str, Any] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)  # recorded in the identity (the task is built
    task_spec: str | None = None                                 # from them by the caller); ``NAME[:PATH]``
    decoding: Any = None  # a hallufix.decoding.Decoding (None: greedy); its seed is ``seed``
    #: run-level mode of branches declared ``auto`` (``rows`` / ``separate``; ``None``: each branch's own rule,
    #: hallufix.branches.Branch.resolved_mode). A layout of the same computation, like ``batch_size``: recorded in
    #: config.yaml, not part of the run's identity
    branch_mode: str | None = None

    @property
    def stack(self) -> str:
        return "+".join(self.plugins) if self.plugins else "baseline"


def cell_spec(cell) -> RunSpec:
    """The :class:`RunSpec` of one planned cell: a resolved :class:`hallufix.config.Cell` (its ``spec``) or a
    bare :class:`RunSpec` (the Python API's :func:`execute`)."""
    if isinstance(cell, RunSpec):
        return cell
    spec = getattr(cell, "spec", None)
    if isinstance(spec, RunSpec):
        return spec
    raise TypeError(f"not a run cell: {type(cell).__name__} — resolve cells with hallufix.config.resolve")


def activate_cell(cell, session, registry=None):
    """The cell's methods, activated for ``session`` (an :class:`~hallufix.plugins.ActiveMethods`)."""
    from hallufix.plugins import activate

    if getattr(cell, "methods", None) is not None and not isinstance(cell, RunSpec):
        return activate(cell.methods)  # resolved before the model loaded (hallufix.config.resolve)
    spec = cell_spec(cell)
    return activate(spec.plugins, family=session.info.family, overrides=spec.overrides, registry=registry,
                    model=session.info.name)


def is_baseline(cell) -> bool:
    """A cell without methods."""
    return not cell_spec(cell).plugins


def comparable(a, b) -> bool:
    """Whether two cells run the very same samples with the same generation (a baseline for the other)."""
    x, y = cell_spec(a), cell_spec(b)
    keys = ("model", "task", "limit", "seed", "max_new_tokens", "dtype", "device", "batch_size")
    return all(getattr(x, k) == getattr(y, k) for k in keys) and x.task_options == y.task_options


def decoding_of(spec: RunSpec):
    """The run's :class:`~hallufix.decoding.Decoding`, seeded with the run's ``seed``."""
    from dataclasses import replace

    from hallufix.decoding import Decoding

    return replace(spec.decoding or Decoding(), seed=spec.seed)
