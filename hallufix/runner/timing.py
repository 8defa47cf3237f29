"""Timing of a run: per-sample wall time in ``timing.jsonl``, kept apart from ``samples.jsonl`` so that the samples
are byte-for-byte deterministic and the timing is never lost by a resume.

One line per finished batch, appended after its records::

    {"ids": [...], "wall_s": 0.41, "s_per_sample": 0.1025, "tokens": 12, "peak_mem_mb": 812.0,
     "process": "<pid>-<ns>", "rank": 0, "fired": {...}, "paths": {...}}

``wall_s`` is the batch's ``generate`` time in seconds (``time.perf_counter``, the warm-up excluded; on CUDA after a
synchronize); a sample's wall time is its batch's ``wall_s`` divided by the batch's size (one batched ``generate``
cannot be split further). ``fired``/``paths`` are the batch's hook counts. A multi-process run writes
``shards/timing.<rank>.jsonl`` per rank; runs written before this module have ``batches.jsonl`` (same lines, read
the same way).

Overhead against a baseline (:func:`overhead_vs`) is recomputed from both directories' logs whenever a run finishes
(also when a finished run is rerun), over the samples both timed: ``ratio`` is the median over those samples of
``method s/sample / baseline s/sample``, with its interquartile range; with the runner's interleaved schedule both
halves of a pair were timed back to back, so machine noise that hits both cancels (as ``benchmarks/overhead.py``).
"""
from __future__ import annotations

import statistics
from pathlib import Path

from hallufix.runner import store

TIMING, LEGACY = "timing.jsonl", "batches.jsonl"


def timing_path(out_dir: Path, rank: int | None = None) -> Path:
    """Where this process appends: ``timing.jsonl``, or ``shards/timing.<rank>.jsonl`` under several ranks."""
    return Path(out_dir) / TIMING if rank is None else store.shard_path(out_dir, rank, "timing")


def batch_line(ids: list[str], wall_s: float, *, tokens: int, peak_mem_mb: float | None, process: str,
               rank: int, hooks: dict) -> dict:
    """The timing line of one finished batch (see the module docstring)."""
    return {"ids": ids, "wall_s": wall_s, "s_per_sample": wall_s / max(len(ids), 1), "tokens": tokens,
            "peak_mem_mb": peak_mem_mb, "process": process, "rank": rank, **hooks}


def read_lines(out_dir: Path) -> list[dict]:
    """Every timing line of a run directory (single-process log, every rank's shard, the legacy log); torn and
    corrupt lines are skipped (timing is advisory: it never stops a run)."""
    paths = [Path(out_dir) / TIMING, Path(out_dir) / LEGACY, *store.shard_files(out_dir, "timing")]
    out: list[dict] = []
    for p in paths:
        out.extend(store.read_jsonl(p, drop_corrupt=True, what="timing line", keep_aside=False))
    return out


def per_sample(out_dir: Path, ids: set[str]) -> dict[str, float]:
    """``{id: seconds}`` for the finished samples ``ids`` (a sample timed twice, e.g. redone after a corrupt line:
    the last time)."""
    out: dict[str, float] = {}
    for b in read_lines(out_dir):
        if b.get("ids") and set(b["ids"]) <= ids:
            each = b.get("s_per_sample", float(b.get("wall_s") or 0.0) / len(b["ids"]))
            out.update((i, float(each)) for i in b["ids"])
    return out


def measurements(out_dir: Path, ids: set[str]) -> dict:
    """Timing and hook counts summed over every logged batch whose samples are all among ``ids`` (finished ones):
    ``{"wall_s", "samples", "tokens", "processes", "ranks", "fired", "paths", "peak_mem_mb"}`` (peak: the largest
    over batches, MiB; ``None`` for logs written before it was recorded)."""
    total = {"wall_s": 0.0, "samples": 0, "tokens": 0, "processes": set(), "ranks": set(), "fired": {}, "paths": {},
             "peak_mem_mb": None}
    for b in read_lines(out_dir):
        if not b.get("ids") or not set(b["ids"]) <= ids:
            continue
        total["wall_s"] += float(b.get("wall_s") or 0.0)
        total["samples"] += len(b["ids"])
        total["tokens"] += int(b.get("tokens") or 0)
        total["processes"].add(b.get("process"))
        total["ranks"].add(int(b.get("rank") or 0))
        if b.get("peak_mem_mb") is not None:
            total["peak_mem_mb"] = max(total["peak_mem_mb"] or 0.0, float(b["peak_mem_mb"]))
        for key in ("fired", "paths"):
            for k, v in (b.get(key) or {}).items():
                total[key][k] = total[key].get(k, 0) + int(v)
    total["processes"] = len(total["processes"])
    total["ranks"] = len(total["ranks"])
    return total


def overhead_vs(out_dir: Path, baseline_dir: Path | None, ids: set[str]) -> dict:
    """``{"baseline", "baseline_wall_s_per_sample", "ratio", "ratio_iqr", "paired_samples"}`` of the run in
    ``out_dir`` against ``baseline_dir`` (``None`` values when there is no baseline or no sample both timed)."""
    out = {"baseline": None, "baseline_wall_s_per_sample": None, "ratio": None, "ratio_iqr": None,
           "paired_samples": 0}
    if baseline_dir is None:
        return out
    mine, base = per_sample(out_dir, ids), per_sample(baseline_dir, ids)
    common = [i for i in sorted(mine) if i in base and base[i] > 0]
    out["baseline"] = Path(baseline_dir).name
    if not common:
        return out
    ratios = [mine[i] / base[i] for i in common]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratios[0],) * 3
    out.update(baseline_wall_s_per_sample=sum(base[i] for i in common) / len(common),
               ratio=statistics.median(ratios), ratio_iqr=[q1, q3], paired_samples=len(common))
    return out
