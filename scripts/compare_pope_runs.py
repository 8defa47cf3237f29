"""Compare shapes-pope run directories with a reference run on the samples they share (e.g. a ``--limit 300`` run
against the full 900-question run of the default): accuracy per split, false-positive rates on absent partners and
other absent classes, and how many answers differ.

    python scripts/compare_pope_runs.py REFERENCE_DIR RUN_DIR [RUN_DIR ...]

Scores come from each directory's ``samples.jsonl`` with the task's own scorer (``ShapesPope.score``), restricted
to the shared ids, so the reference and the variant are scored on the same questions. The measured effects of the
open choices in docs/methods/*.md come from it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from hallufix.tasks.shapes import ShapesPope


def records(folder: Path) -> dict[str, dict]:
    return {r["id"]: r for r in (json.loads(x) for x in (folder / "samples.jsonl").open() if x.strip())}


def summary(recs: list[dict]) -> str:
    m = ShapesPope().score(recs)
    acc = " / ".join(f"{m[s]['accuracy']:.4f}" for s in ("random", "popular", "adversarial") if s in m)
    partner = [r for r in recs if (r.get("meta") or {}).get("negative") == "partner"]
    return (f"accuracy r/p/a {acc}; FP partner {m['all']['fp_rate_partner']:.3f} "
            f"({sum(r['parsed'] == 'yes' for r in partner)}/{len(partner)}), other {m['all']['fp_rate_other']:.3f}")


def main() -> None:
    ref = records(Path(sys.argv[1]))
    for arg in sys.argv[2:]:
        run = records(Path(arg))
        ids = [i for i in run if i in ref]
        changed = sum(run[i]["output"] != ref[i]["output"] for i in ids)
        print(f"{arg}: {summary([run[i] for i in ids])}; {changed}/{len(ids)} answers differ from the reference")
    if len(sys.argv) > 2:
        ids = [i for i in records(Path(sys.argv[2])) if i in ref]
        print(f"reference {sys.argv[1]} on the same {len(ids)}: {summary([ref[i] for i in ids])}")


if __name__ == "__main__":
    main()
