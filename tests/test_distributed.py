"""Scale-out: ``torchrun --nproc_per_node 2 -m hallufix run`` shards a run's samples over two CPU processes (gloo)
and gives byte-identical samples and the same metrics as one process; a killed rank is resumed by relaunching."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not __import__("torch").distributed.is_available(),
                                reason="this torch has no torch.distributed")

#: A method that changes nothing; with ``KILL_RANK`` set, that rank SIGKILLs itself in its second ``batch_end``
#: (a real kill mid-run: the batch being finished is lost, the ones before are on disk).
KILLER = '''
import os
import signal

import hallufix
from hallufix.method import Method


class Killer(Method):
    name = "killer"

    def __init__(self, config=None):
        super().__init__(config)
        self.batches = 0

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        self.batches += 1
        if os.environ.get("KILL_RANK") == os.environ.get("RANK", "0") and self.batches >= 2:
            os.kill(os.getpid(), signal.SIGKILL)
'''


def torchrun() -> list[str]:
    """``torchrun`` of this very interpreter (the console script may point at another environment's python)."""
    return [sys.executable, "-m", "torch.distributed.run"]


def launch(args, out, nproc=1, **env):
    run = ["run", "--limit", "40", "--batch-size", "4", "--quiet", "--no-baseline", "--output", str(out), *args]
    cmd = [*torchrun(), "--nproc_per_node", str(nproc), "-m", "hallufix", *run] if nproc > 1 else \
        [sys.executable, "-m", "hallufix", *run]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)


def test_two_ranks_equal_one_process_and_a_killed_rank_resumes(tmp_path):
    plugin = tmp_path / "killer.py"
    plugin.write_text(KILLER)
    args = ["--plugins", str(plugin)]
    one = launch(args, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-2000:]
    killed = launch(args, tmp_path / "two", nproc=2, KILL_RANK="1")
    assert killed.returncode != 0  # rank 1 died; torchrun stopped the launch
    cell = tmp_path / "two" / "killer"
    assert not (cell / "results.json").exists()
    kept = (cell / "shards" / "samples.1.jsonl").read_text().splitlines()
    assert len(kept) == 4  # rank 1's first batch (global batch 1: samples 4-7) is on disk, the second was lost
    again = launch(args, tmp_path / "two", nproc=2)
    assert again.returncode == 0, again.stderr[-2000:]
    ref, got = tmp_path / "one" / "killer", cell
    assert (got / "samples.jsonl").read_bytes() == (ref / "samples.jsonl").read_bytes()
    assert not list((got / "shards").glob("samples.*.jsonl"))  # merged into samples.jsonl, in task order
    a, b = (json.loads((d / "results.json").read_text()) for d in (ref, got))
    assert a["metrics"] == b["metrics"] and a["identity_hash"] == b["identity_hash"] and b["task"]["n"] == 40
    assert b["execution"]["world_size"] == 2 and b["execution"]["ranks"] == 2 and a["execution"]["world_size"] == 1
    # the resumed launch redid only what was lost: rank 1's first batch was timed by the killed launch
    timing = [json.loads(x) for f in sorted((got / "shards").glob("timing.*.jsonl")) for x in f.read_text().splitlines()
              if x.strip()]
    assert sum(len(t["ids"]) for t in timing) == 40 and b["overhead"]["processes"] >= 3
    assert "x baseline" in again.stdout and b["overhead"]["samples_timed"] == 40
