"""The console summary ``hallufix run`` prints: one column per run (baseline first), one row per metric, and the
wall-time overhead of each run against the baseline, as the runner recorded it in ``results.json``
(:mod:`hallufix.runner.timing`). Reads only; never writes a run directory."""
from __future__ import annotations

COUNTS = {"tp", "fp", "tn", "fn", "n", "mentions"}


def _fmt(v) -> str:
    if v is None or v != v:  # None, or the NaN pandas makes of it
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def _name(spec) -> str:
    from hallufix.experiment import method_label

    stack = "+".join(method_label(p) for p in spec.plugins) or "baseline"  # ./my_method.py -> my_method
    return stack + "".join(f" {k}={v}" for k, v in sorted(spec.swept.items()) if k != "plugins")


def summary_table(results: list) -> str:
    """``results``: ``[(RunSpec, out_dir, results_dict), ...]`` -> aligned text table (raw counts stay in
    results.json)."""
    import pandas as pd

    cols = {}
    for spec, _, res in results:
        col = {}
        for split, metrics in res["metrics"].items():
            for metric, m in metrics.items():
                if metric not in COUNTS:
                    col[(split, metric)] = m["value"]
        over = res.get("overhead") or {}
        col[("time", "s/sample")] = over.get("wall_s_per_sample")
        col[("time", "x baseline")] = over.get("ratio")
        cols[_name(spec)] = col
    df = pd.DataFrame(cols)
    df.index = [f"{s}/{m}" for s, m in df.index]
    return df.map(_fmt).to_string()

