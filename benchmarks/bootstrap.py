"""Speed of `hallufix report`'s statistics: the paired, stratified bootstrap of every POPE metric on a 9,000-pair
comparison (3 splits x 3,000 questions, the size of COCO POPE), against the former pure-Python bootstrap of one
metric (accuracy) measured in the same run.

    python benchmarks/bootstrap.py [--n 9000] [--boot 2000]
"""
from __future__ import annotations

import argparse
import random
import time

import numpy as np

from hallufix import stats


def python_bootstrap(deltas, n_boot, seed=0):
    """The former report.paired_comparison loop (one metric)."""
    rng = random.Random(seed)
    n = len(deltas)
    return sorted(sum(deltas[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=9000)
    ap.add_argument("--boot", type=int, default=2000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    splits = np.repeat(["random", "popular", "adversarial"], args.n // 3)
    gold = rng.random(len(splits)) < 0.5
    a = np.where(rng.random(len(splits)) < 0.85, gold, ~gold)
    b = np.where(rng.random(len(splits)) < 0.87, gold, ~gold)
    keys = [str(i) for i in range(len(splits))]
    ua, ub = (stats.Units("yesno", keys, list(splits), {"gold_yes": gold, "pred_yes": p, "pred_no": ~p})
              for p in (a, b))
    wanted = {s: {"accuracy", "precision", "recall", "f1", "yes_ratio"} for s in set(splits)}
    wanted["all"] = {"mean_f1"}
    t0 = time.perf_counter()
    out = stats.bootstrap(ua, wanted, other=ub, n_boot=args.boot)
    ours = time.perf_counter() - t0
    deltas = [int(y == g) - int(x == g) for x, y, g in zip(a, b, gold)]
    t0 = time.perf_counter()
    python_bootstrap(deltas, args.boot)
    old = time.perf_counter() - t0
    print(f"{len(keys)} pairs, {args.boot} resamples: vectorised, {len(out)} metrics: {ours:.2f} s; "
          f"pure-Python, 1 metric: {old:.2f} s; ratio per metric {old / (ours / len(out)):.0f}x faster, "
          f"all metrics {old / ours:.1f}x faster")


if __name__ == "__main__":
    main()
