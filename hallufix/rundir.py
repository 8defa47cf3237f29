"""Former home of the run-directory store; kept so ``from hallufix import rundir`` keeps working. New code imports
:mod:`hallufix.runner.store`."""
from __future__ import annotations

from hallufix.runner.store import (LOCK, SAMPLES, RunLock, append_records, check_unlocked,  # noqa: F401
                                   config_diff, cut_torn_tail, dumps, holds_exactly, read_jsonl, read_records,
                                   remove_empty_run, rewrite_jsonl, strict, write_json, write_text)
from hallufix.runner.timing import LEGACY as BATCHES, measurements  # noqa: F401
