"""Reports over run directories: a tidy long table, CSV / Markdown / LaTeX, and paired comparisons with the baseline.

Long table columns: ``run, model, methods, task, split, metric, value, n, seed`` plus one ``cfg.<key>`` column per
swept key. Ablation tables are pivots of it. Paired comparison (yes/no tasks): per sample matched by id, the
difference in accuracy, a McNemar exact p-value and a paired bootstrap 95% interval.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd


def load_run(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no results.json (an unfinished run? rerun it to finish)")
    return json.loads(path.read_text())


def build_table(run_dirs: list[str | Path]) -> pd.DataFrame:
    """The tidy long table of every metric of every run."""
    rows = []
    for d in run_dirs:
        res = load_run(d)
        methods = "+".join(m["name"] for m in res["methods"]) or "baseline"
        for split, metrics in res["metrics"].items():
            for metric, m in metrics.items():
                row = {"run": Path(d).name, "model": res["model"]["id"], "methods": methods,
                       "task": res["task"]["name"], "split": split, "metric": metric, "value": m["value"],
                       "higher_is_better": m.get("higher_is_better"), "n": m.get("n"), "seed": res.get("seed")}
                for k, v in (res.get("swept") or {}).items():
                    row[f"cfg.{k}"] = v
                rows.append(row)
    return pd.DataFrame(rows)


def pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Runs as columns, (task, split, metric) as rows."""
    return df.pivot_table(index=["task", "split", "metric"], columns="run", values="value", aggfunc="first")


def write_tables(df: pd.DataFrame, out_dir: str | Path, formats=("csv", "md", "latex")) -> list[Path]:
    """``metrics.csv`` (long), ``metrics.md`` and ``metrics.tex`` (pivot)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "csv" in formats:
        df.to_csv(out / "metrics.csv", index=False)
        written.append(out / "metrics.csv")
    table = pivot(df)
    if "md" in formats:
        (out / "metrics.md").write_text(table.to_markdown(floatfmt=".4f") + "\n")
        written.append(out / "metrics.md")
    if "latex" in formats:
        (out / "metrics.tex").write_text(table.style.format(precision=4).to_latex(hrules=True) + "\n")
        written.append(out / "metrics.tex")
    return written


def _samples(run_dir) -> dict[str, dict]:
    recs = {}
    for line in (Path(run_dir) / "samples.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            recs[r["id"]] = r
    return recs


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_comparison(baseline_dir, run_dir, n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy difference (run - baseline) on samples matched by id, McNemar exact p and bootstrap 95% CI."""
    a, b = _samples(baseline_dir), _samples(run_dir)
    ids = sorted(set(a) & set(b))
    pairs = [(str(a[i]["parsed"]).lower() == str(a[i]["answer"]).lower(),
              str(b[i]["parsed"]).lower() == str(b[i]["answer"]).lower()) for i in ids if a[i].get("answer")]
    if not pairs:
        return {}
    n = len(pairs)
    diff = (sum(y for _, y in pairs) - sum(x for x, _ in pairs)) / n
    only_base = sum(x and not y for x, y in pairs)
    only_run = sum(y and not x for x, y in pairs)
    rng = random.Random(seed)
    boots = sorted(sum(pairs[j][1] - pairs[j][0] for j in (rng.randrange(n) for _ in range(n))) / n
                   for _ in range(n_boot))
    return {"n": n, "accuracy_diff": diff, "mcnemar_p": mcnemar_exact(only_base, only_run),
            "only_baseline_right": only_base, "only_run_right": only_run,
            "ci95": [boots[int(0.025 * n_boot)], boots[int(0.975 * n_boot) - 1]]}


def comparisons(run_dirs: list[str | Path]) -> pd.DataFrame:
    """Every run against the baseline run (the one with no methods) of the same task."""
    runs = {str(d): load_run(d) for d in run_dirs}
    base = {r["task"]["name"]: d for d, r in runs.items() if not r["methods"]}
    rows = []
    for d, r in runs.items():
        if not r["methods"] or r["task"]["name"] not in base:
            continue
        cmp = paired_comparison(base[r["task"]["name"]], d)
        if cmp:
            rows.append({"run": Path(d).name, "task": r["task"]["name"], **{k: v for k, v in cmp.items()
                                                                            if k != "ci95"},
                         "ci95_low": cmp["ci95"][0], "ci95_high": cmp["ci95"][1]})
    return pd.DataFrame(rows)
