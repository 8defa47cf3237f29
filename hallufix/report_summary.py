"""The console summary ``hallufix run`` prints: one column per run (baseline first), one row per metric, and
the wall-time overhead of each run against the baseline measured in the same process."""
from __future__ import annotations


COUNTS = {"tp", "fp", "tn", "fn", "n", "mentions"}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def _name(spec) -> str:
    from hallufix.experiment import method_label

    stack = "+".join(method_label(p) for p in spec.plugins) or "baseline"  # ./my_method.py -> my_method
    return stack + "".join(f" {k}={v}" for k, v in sorted(spec.swept.items()) if k != "plugins")


def summary_table(results: list) -> str:
    """``results``: ``[(RunSpec, out_dir, results_dict), ...]`` -> aligned text table."""
    import pandas as pd

    cols, base_wall = {}, None
    for spec, _, res in results:
        name = _name(spec)
        col = {}
        for split, metrics in res["metrics"].items():
            for metric, m in metrics.items():
                if metric not in COUNTS:  # raw counts stay in results.json
                    col[(split, metric)] = m["value"]
        wall = res["overhead"]["wall_s_per_sample"]
        if not spec.plugins and base_wall is None:
            base_wall = wall
        col[("time", "s/sample")] = wall
        cols[name] = col
    for spec, _, res in results:
        name = _name(spec)
        wall = cols[name][("time", "s/sample")]
        ratio = (wall / base_wall) if (wall and base_wall) else None
        cols[name][("time", "x baseline")] = ratio
        res["overhead"]["baseline_wall_s_per_sample"] = base_wall
        res["overhead"]["ratio"] = ratio
    df = pd.DataFrame(cols)
    df.index = [f"{s}/{m}" for s, m in df.index]
    return df.map(_fmt).to_string()
