"""CLVA anchor counts per prompt from run directories, and how many answers differ from a baseline run.

    python scripts/clva_anchor_counts.py RUN_DIR [RUN_DIR ...] [--baseline BASE_DIR] [--limit N]

Reads ``samples.jsonl`` (CLVA's diagnostics count the anchor tokens at prefill) and prints, per run: prompts with at
least one negative anchor, mean negative and positive anchors per prompt, and answers that differ from the
baseline's on the same sample ids.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _records(folder: str) -> dict[str, dict]:
    return {r["id"]: r for r in (json.loads(x) for x in (Path(folder) / "samples.jsonl").open() if x.strip())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--limit", type=int, default=None, help="each run's first N samples only")
    args = ap.parse_args()
    base = _records(args.baseline) if args.baseline else None
    for folder in args.runs:
        recs = _records(folder)
        if args.limit:
            recs = dict(list(recs.items())[: args.limit])
        pre = [r["diagnostics"]["clva"]["prefill"] for r in recs.values()]
        neg = [p["negative_anchors"] for p in pre]
        pos = [p["positive_anchors"] for p in pre]
        line = (f"{Path(folder).name}: {sum(n > 0 for n in neg)}/{len(neg)} prompts with negative anchors, "
                f"{sum(neg) / len(neg):.2f} negative and {sum(pos) / len(pos):.2f} positive per prompt")
        if base is not None:
            changed = sum(recs[i]["output"] != base[i]["output"] for i in recs if i in base)
            line += f"; {changed} answers differ from the baseline"
        print(line)


if __name__ == "__main__":
    main()
