"""The runner: schedules an experiment's cells on one loaded model (or over the ranks of a ``torchrun`` launch),
owns their run directories, and writes each ``results.json`` once.

* :mod:`~hallufix.runner.spec`: :class:`RunSpec` and the one seam that reads planned cells;
* :mod:`~hallufix.runner.schedule`: :func:`run_cells` (warm-up, interleaved rounds, baselines finished first),
  :func:`execute` (one cell), :func:`run_with_baseline` (a method and its baseline, with the overhead ratio);
* :mod:`~hallufix.runner.cellrun`: one cell's directory: open / resume, batches, finish;
* :mod:`~hallufix.runner.timing`: per-sample wall time (``timing.jsonl``) and the overhead ratio;
* :mod:`~hallufix.runner.results`: the ``results.json`` schema and its reader;
* :mod:`~hallufix.runner.store`: the one reader and writer of run-directory files;
* :mod:`~hallufix.runner.world`: ranks from the launcher's environment, sharding.
"""
from __future__ import annotations

from hallufix.runner.results import SCHEMA_VERSION, environment, git_hash, metrics_block, read_results
from hallufix.runner.schedule import Job, execute, run_cells, run_with_baseline
from hallufix.runner.spec import RunSpec, activate_cell, cell_spec
from hallufix.runner.store import read_records


def read_samples(path, *, drop_corrupt: bool = False) -> list[dict]:
    """Finished records of one ``samples.jsonl`` file (a torn last line dropped; see
    :func:`hallufix.runner.store.read_jsonl`)."""
    from hallufix.runner.store import read_jsonl

    return read_jsonl(path, drop_corrupt=drop_corrupt)


__all__ = ["Job", "RunSpec", "SCHEMA_VERSION", "activate_cell", "cell_spec", "environment", "execute", "git_hash",
           "metrics_block", "read_records", "read_results", "read_samples", "run_cells", "run_with_baseline"]
