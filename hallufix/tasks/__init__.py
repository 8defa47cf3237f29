"""Benchmarks as tasks: loading official files, prompts, parsing and exact scoring.

Every module in this package registers its tasks with :func:`hallufix.tasks.base.register_task` on import;
importing the package imports them all (no torch needed).
"""
from __future__ import annotations

import importlib
import pkgutil

from hallufix.tasks.base import Sample, Task, TaskError, get_task, known_tasks, register_task

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_") and _mod != "base":
        importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["Sample", "Task", "TaskError", "get_task", "known_tasks", "register_task"]
