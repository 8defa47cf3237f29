"""The "Effect of each method" table of docs/builtin-model.md from the 33 run directories of
``hallufix ablate configs/ablations/methods-builtin.yaml --task T --output ROOT/T`` (T = shapes-pope, shapes-chair,
shapes-mme).

    python scripts/builtin_method_table.py ROOT [ROOT ...]

Several roots: each stack is read from the first root that has it (a grid run later for new methods beside an
earlier one).

Prints a Markdown table: one column per stack (baseline first), the POPE accuracy per split and mean F1, the
false-positive rates on absent partners and on other absent classes (with counts), CHAIR and MME.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

STACKS = ["baseline", "clva", "ara", "contrast", "fhi", "clva+ara", "dola", "memvr", "vcd", "vcd+clva", "pai"]
ROWS = [  # (label, task, split, metric, format)
    ("POPE random accuracy", "shapes-pope", "random", "accuracy", "{:.4f}"),
    ("POPE popular accuracy", "shapes-pope", "popular", "accuracy", "{:.4f}"),
    ("POPE adversarial accuracy", "shapes-pope", "adversarial", "accuracy", "{:.4f}"),
    ("POPE mean F1", "shapes-pope", "all", "mean_f1", "{:.4f}"),
    ("POPE FP rate, partners", "shapes-pope", "all", "fp_rate_partner", "{:.3f}"),
    ("POPE FP rate, other absent", "shapes-pope", "all", "fp_rate_other", "{:.3f}"),
    ("CHAIR_s ↓", "shapes-chair", "all", "chair_s", "{:.2f}"),
    ("CHAIR_i ↓", "shapes-chair", "all", "chair_i", "{:.2f}"),
    ("CHAIR recall", "shapes-chair", "all", "recall", "{:.2f}"),
    ("MME hallucination total", "shapes-mme", "all", "hallucination", "{:.2f}"),
    ("MME object level", "shapes-mme", "all", "object_level", "{:.2f}"),
    ("MME attribute level", "shapes-mme", "all", "attribute_level", "{:.2f}"),
]


def main() -> None:
    roots = [Path(r) for r in sys.argv[1:]]
    metrics = {}
    for task in ("shapes-pope", "shapes-chair", "shapes-mme"):
        for stack in STACKS:
            found = [f for f in (root / task / stack / "results.json" for root in roots) if f.is_file()]
            metrics[task, stack] = json.loads(found[0].read_text())["metrics"] if found else None
    print("| metric | " + " | ".join(STACKS) + " |")
    print("|---|" + "---|" * len(STACKS))
    for label, task, split, key, fmt in ROWS:
        cells = []
        for stack in STACKS:
            m = metrics[task, stack]
            cells.append(fmt.format(m[split][key]["value"]) if m else "—")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
