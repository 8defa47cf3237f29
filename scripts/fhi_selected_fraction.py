"""Share of all heads FHI-CCR selected per prompt, at prefill and at the last decode step, from a run directory.

    python scripts/fhi_selected_fraction.py RUN_DIR [--heads L*H] [--limit N]

Reads ``RUN_DIR/samples.jsonl`` (the ``fhi`` diagnostics list the selected heads per layer for both phases) and
prints the mean per-prompt fraction with its range; ``--heads`` defaults to the built-in model's 8 x 4 = 32.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def fractions(records: list[dict], heads: int) -> dict:
    out = {}
    for phase in ("prefill", "last"):
        per = []
        for r in records:
            sel = r["diagnostics"]["fhi"]["selected_heads"]
            layers = sel[phase] if (phase == "prefill" or sel["last"]) else sel["prefill"]
            per.append(sum(len(v["perception"]) + len(v["reasoning"]) for v in layers.values()) / heads)
        out[phase] = {"mean": sum(per) / len(per), "min": min(per), "max": max(per), "n": len(per)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None, help="the run's first N samples only")
    args = ap.parse_args()
    records = [json.loads(line) for line in (Path(args.run_dir) / "samples.jsonl").open() if line.strip()]
    records = records[: args.limit] if args.limit else records
    for phase, f in fractions(records, args.heads).items():
        print(f"{phase:>7}: {100 * f['mean']:.2f}% of heads per prompt (range {100 * f['min']:.1f}-"
              f"{100 * f['max']:.1f}%, {f['n']} prompts)")


if __name__ == "__main__":
    main()
