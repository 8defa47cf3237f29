"""PyTorch module hooks as one installer: forward pre-hooks and forward hooks on named modules of a model.

Keeps the exact ``RemovableHandle`` of every hook it registered and removes only those, in reverse order (never an
unscoped "remove every hook on this module", which would drop hooks other code installed).
"""
from __future__ import annotations

from typing import Callable

import torch


class ModuleHooks:
    """Queue hooks with :meth:`pre` / :meth:`post`, then :meth:`install` registers them all; :meth:`remove` removes
    exactly those. Hooks queued after ``install`` are registered at once."""

    def __init__(self):
        self._queued: list[tuple[torch.nn.Module, str, Callable, bool, bool]] = []
        self._handles: list = []
        self._installed = False

    def pre(self, module: torch.nn.Module, fn: Callable, *, with_kwargs: bool = False) -> "ModuleHooks":
        """A forward pre-hook ``fn(module, args[, kwargs])`` on ``module`` (see ``register_forward_pre_hook``)."""
        return self._add((module, "pre", fn, with_kwargs, False))

    def post(self, module: torch.nn.Module, fn: Callable, *, with_kwargs: bool = False,
             prepend: bool = False) -> "ModuleHooks":
        """A forward hook ``fn(module, args[, kwargs], output)`` on ``module`` (see ``register_forward_hook``;
        ``prepend``: run before the module's other forward hooks)."""
        return self._add((module, "post", fn, with_kwargs, prepend))

    def _add(self, spec) -> "ModuleHooks":
        self._queued.append(spec)
        if self._installed:
            self._register(spec)
        return self

    def _register(self, spec) -> None:
        module, kind, fn, with_kwargs, prepend = spec
        if kind == "pre":
            self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs))
        else:
            self._handles.append(module.register_forward_hook(fn, with_kwargs=with_kwargs, prepend=prepend))

    def install(self) -> None:
        self._installed = True
        for spec in self._queued:
            self._register(spec)

    def remove(self) -> None:
        for h in reversed(self._handles):
            h.remove()
        self._handles.clear()
        self._installed = False
