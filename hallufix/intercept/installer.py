"""The installer protocol every model-touching mechanism follows, and the context manager that composes them.

An installer changes a model in one reversible way: :meth:`Installer.install` makes the change, :meth:`remove`
undoes exactly that change (and nothing else) and is safe to call when ``install`` did not run or failed halfway.
:class:`Installed` installs a list in order and removes them in reverse, also when an install or the body raises,
so a model is never left half-hooked. Everything in :mod:`hallufix.intercept` that touches a model is an installer
(module hooks, attention implementation switches, weight folds, the early stop of an analysis prefill); nothing
outside this package touches a model (``tests/test_intercept_boundary.py`` checks it).
"""
from __future__ import annotations

from typing import Protocol


class Installer(Protocol):
    """One reversible change to a model."""

    def install(self) -> None:
        """Make the change."""

    def remove(self) -> None:
        """Undo exactly what :meth:`install` did (idempotent; also after a failed or skipped install)."""


class Installed:
    """``with Installed(a, b, c): ...``: install in order, remove in reverse order on exit or on any failure.

    ``None`` entries are skipped, so optional installers read as ``Installed(hooks, stop if layers else None)``."""

    def __init__(self, *installers: Installer | None):
        self.installers = [i for i in installers if i is not None]
        self._done: list[Installer] = []

    def __enter__(self) -> "Installed":
        try:
            for inst in self.installers:
                self._done.append(inst)  # removed even when its own install fails halfway
                inst.install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._remove()

    def _remove(self) -> None:
        errors: list[BaseException] = []
        for inst in reversed(self._done):
            try:
                inst.remove()
            except Exception as e:  # keep removing the others; report the first failure
                errors.append(e)
        self._done.clear()
        if errors:
            raise errors[0]

