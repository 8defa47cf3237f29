"""Former home of the runner; kept so ``from hallufix.runs import RunSpec, execute`` keeps working. New code
imports :mod:`hallufix.runner`."""
from __future__ import annotations

from hallufix.runner import (SCHEMA_VERSION, RunSpec, environment, execute, git_hash,  # noqa: F401
                             metrics_block, read_samples, run_cells, run_with_baseline)
