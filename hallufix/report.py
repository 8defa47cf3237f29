"""Reports over run directories: a tidy long table, CSV / Markdown / LaTeX, and paired comparisons with the baseline.

Long table (:func:`build_table`): one row per (run, split, metric) with columns ``run, model, methods, task,
split, metric, value, n, seed`` plus one ``cfg.<key>`` column per swept key; ablation tables are pivots of it.

Comparison (:func:`compare_to_baseline`): every run against the baseline run of the same model and task (the run
whose ``methods`` list is empty), per metric: baseline value, value and difference (run - baseline), and whether
that is better given the metric's direction. For yes/no tasks the ``accuracy`` rows also carry a paired test on
the samples matched by ``id`` in the two runs' ``samples.jsonl``: exact two-sided McNemar p-value and a paired
bootstrap 95% interval of the accuracy difference (:func:`paired_comparison`). No torch.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd

BASE_COLUMNS = ["run", "model", "methods", "task", "split", "metric", "value", "n", "seed"]


class ReportError(ValueError):
    """A run directory that cannot be read: names the directory and what is wrong."""


def load_run(run_dir: str | Path) -> dict:
    """``results.json`` of a run directory (:class:`ReportError` if missing or malformed)."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ReportError(f"{run_dir} has no results.json (an unfinished run? rerun it to finish)")
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    missing = [k for k in ("model", "methods", "task", "metrics") if k not in res]
    if missing:
        raise ReportError(f"{path}: missing keys {missing} (schema_version {res.get('schema_version')})")
    return res


def run_name(run_dir: str | Path, res: dict) -> str:
    return str(res.get("run_id") or Path(run_dir).name)


def methods_label(res: dict) -> str:
    """``clva+ara`` (stack order), or ``baseline`` for a run without methods."""
    return "+".join(m["name"] for m in res["methods"]) or "baseline"


def build_table(run_dirs: list[str | Path]) -> pd.DataFrame:
    """The tidy long table of every metric of every run (see the module docstring)."""
    rows, cfg_keys = [], set()
    for d in run_dirs:
        res = load_run(d)
        swept = res.get("swept") or {}
        cfg_keys.update(swept)
        for split, metrics in res["metrics"].items():
            for metric, m in metrics.items():
                row = {"run": run_name(d, res), "model": res["model"].get("id"), "methods": methods_label(res),
                       "task": res["task"].get("name"), "split": split, "metric": metric,
                       "value": m["value"] if isinstance(m, dict) else m,
                       "n": m.get("n") if isinstance(m, dict) else None, "seed": res.get("seed")}
                row.update({f"cfg.{k}": v for k, v in swept.items()})
                rows.append(row)
    columns = BASE_COLUMNS + [f"cfg.{k}" for k in sorted(cfg_keys)]
    return pd.DataFrame(rows, columns=columns)


def pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Runs as columns, ``(task, split, metric)`` as rows (the paper-table view)."""
    return df.pivot_table(index=["task", "split", "metric"], columns="run", values="value", aggfunc="first",
                          sort=False)


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs LaTeX table, 4 decimals, special characters (``_``, ``%``, ...) escaped."""
    styler = table.style.format(precision=4, na_rep="--", escape="latex")
    styler = styler.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    return styler.to_latex(hrules=True)


def write_tables(df: pd.DataFrame, out_dir: str | Path, formats=("csv", "md", "latex"),
                 comparison: pd.DataFrame | None = None) -> list[Path]:
    """Write ``metrics.csv`` (long table), ``metrics.md`` and ``metrics.tex`` (pivot) for the chosen ``formats``,
    and ``comparison.{csv,md,tex}`` when a non-empty ``comparison`` is given. Returns the written paths."""
    unknown = set(formats) - {"csv", "md", "latex"}
    if unknown:
        raise ReportError(f"unknown report formats {sorted(unknown)}; known: csv, md, latex")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    tables = [("metrics", df, pivot(df))]
    if comparison is not None and not comparison.empty:
        tables.append(("comparison", comparison, comparison.set_index(["run", "task", "split", "metric"])))
    for stem, long, wide in tables:
        if "csv" in formats:
            long.to_csv(out / f"{stem}.csv", index=False)
            written.append(out / f"{stem}.csv")
        if "md" in formats:
            (out / f"{stem}.md").write_text(wide.to_markdown(floatfmt=".4f") + "\n")
            written.append(out / f"{stem}.md")
        if "latex" in formats:
            (out / f"{stem}.tex").write_text(to_latex(wide))
            written.append(out / f"{stem}.tex")
    return written


def read_samples(run_dir: str | Path) -> dict[str, dict]:
    """``{id: record}`` from a run's ``samples.jsonl`` (the last record wins for a repeated id)."""
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        raise ReportError(f"{run_dir} has no samples.jsonl")
    recs = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                r = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ReportError(f"{path}:{i}: malformed JSON line ({exc.msg})") from None
            if not r.get("nonfinite"):  # flagged by --on-nonfinite record: left out, as in the run's metrics
                recs[str(r["id"])] = r
    return recs


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs: ``min(1, 2 * P(X <= min(b, c)))``
    with ``X ~ Binomial(b + c, 1/2)``."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def is_yes_no(records) -> bool:
    answers = [str(r.get("answer")).strip().lower() for r in records]
    return bool(answers) and all(a in ("yes", "no") for a in answers)


def _gold(r: dict, split: str | None):
    """The record's gold answer in ``split``: its own ``answer`` for its split (or ``None``/``"all"``), else the
    answer its ``meta["answers"]`` gives for another split it is also scored in (RePOPE's ``repope-<split>``)."""
    if split in (None, "all") or r.get("split") == split:
        return r.get("answer")
    return ((r.get("meta") or {}).get("answers") or {}).get(split)


def _correct(r: dict, answer=None) -> bool:
    answer = r.get("answer") if answer is None else answer
    return str(r.get("parsed")).strip().lower() == str(answer).strip().lower()


def paired_comparison(baseline_dir, run_dir, n_boot: int = 2000, seed: int = 0, split: str | None = None) -> dict:
    """Accuracy of ``run_dir`` vs ``baseline_dir`` on the samples both hold (matched by ``id``; only ``split`` if
    given, ``None``/``"all"`` = every sample; a record also scored in another split under other labels carries them in
    ``meta["answers"]``), for records with a gold answer.

    :returns: ``{}`` when nothing matches, else ``n`` (pairs), ``accuracy_baseline``, ``accuracy_run``,
        ``accuracy_diff`` (run - baseline, fraction), ``only_baseline_right``, ``only_run_right``, ``mcnemar_p``
        (exact, two-sided) and ``ci95`` (paired bootstrap percentile interval of the difference, ``n_boot``
        resamples, deterministic for a ``seed``).
    """
    a, b = read_samples(baseline_dir), read_samples(run_dir)
    ids = [i for i in sorted(set(a) & set(b)) if _gold(a[i], split) is not None]
    pairs = [(_correct(a[i], _gold(a[i], split)), _correct(b[i], _gold(a[i], split))) for i in ids]
    if not pairs:
        return {}
    n = len(pairs)
    base_acc, run_acc = sum(x for x, _ in pairs) / n, sum(y for _, y in pairs) / n
    only_base = sum(x and not y for x, y in pairs)
    only_run = sum(y and not x for x, y in pairs)
    deltas = [int(y) - int(x) for x, y in pairs]
    rng = random.Random(seed)
    boots = sorted(sum(deltas[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    lo, hi = boots[int(math.floor(0.025 * (n_boot - 1)))], boots[int(math.ceil(0.975 * (n_boot - 1)))]
    return {"n": n, "accuracy_baseline": base_acc, "accuracy_run": run_acc, "accuracy_diff": run_acc - base_acc,
            "only_baseline_right": only_base, "only_run_right": only_run,
            "mcnemar_p": mcnemar_exact(only_base, only_run), "ci95": [lo, hi]}


def compare_to_baseline(run_dirs: list[str | Path], n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per metric, every run against the baseline of its model and task (see the module docstring).

    Columns: ``run, methods, model, task, split, metric, baseline, value, diff, higher_is_better, better``, and for
    yes/no tasks' ``accuracy`` rows ``n_paired, mcnemar_p, ci95_low, ci95_high`` (NaN elsewhere). Empty when no
    run has a baseline.
    """
    runs = {str(d): load_run(d) for d in run_dirs}
    baselines: dict[tuple, str] = {}
    for d, r in runs.items():
        if not r["methods"]:
            baselines.setdefault((r["model"].get("id"), r["task"].get("name")), d)
    rows = []
    for d, r in runs.items():
        key = (r["model"].get("id"), r["task"].get("name"))
        if not r["methods"] or key not in baselines:
            continue
        base_dir = baselines[key]
        base = runs[base_dir]["metrics"]
        yes_no = None
        for split, metrics in r["metrics"].items():
            for metric, m in metrics.items():
                if metric not in base.get(split, {}):
                    continue
                b = base[split][metric]
                value, bval = m["value"], b["value"]
                hib = m.get("higher_is_better")
                diff = value - bval if value is not None and bval is not None else None
                row = {"run": run_name(d, r), "methods": methods_label(r), "model": key[0], "task": key[1],
                       "split": split, "metric": metric, "baseline": bval, "value": value, "diff": diff,
                       "higher_is_better": hib,
                       "better": None if hib is None or diff is None or diff == 0 else (diff > 0) == bool(hib),
                       "n_paired": None, "mcnemar_p": None, "ci95_low": None, "ci95_high": None}
                if metric == "accuracy":
                    if yes_no is None:
                        yes_no = (Path(d, "samples.jsonl").is_file() and Path(base_dir, "samples.jsonl").is_file()
                                  and is_yes_no(read_samples(base_dir).values()))
                    if yes_no:
                        cmp = paired_comparison(base_dir, d, n_boot=n_boot, seed=seed, split=split)
                        if cmp:
                            row.update(n_paired=cmp["n"], mcnemar_p=cmp["mcnemar_p"], ci95_low=cmp["ci95"][0],
                                       ci95_high=cmp["ci95"][1])
                rows.append(row)
    return pd.DataFrame(rows)


#: Former name of :func:`compare_to_baseline`.
comparisons = compare_to_baseline
