"""Reports over run directories: runs joined by identity, a tidy long table with confidence intervals, and paired
comparisons with the baseline. Paper tables are :mod:`hallufix.report_tables`; statistics :mod:`hallufix.stats`.

Joining. Every run is keyed by its ``identity_hash`` (``results.json``; see :mod:`hallufix.provenance`), never by
its folder name: two folders holding the same run are one run (the second is reported as a duplicate and left
out); two different runs that would print under the same label get their hash appended. A run's label is its
method stack plus its swept config (``clva alpha=10``).

Long table (:func:`build_table`): one row per (run, split, metric) with ``run, model, methods, task, split,
metric, value, ci95_low, ci95_high, higher_is_better, n, seed, partial`` plus one ``cfg.<key>`` column per swept key.

Comparison (:func:`compare_to_baseline`): every run against the baseline (no methods) with the same identity apart
from the methods (model, task, task options and files, prompt template, generation, dtype, device, seed). A
baseline over a different set of samples is *not compared*: the row says why (``note``). Per metric: baseline
value, value, difference (run - baseline) with a paired-bootstrap 95% interval and p-value; for accuracy of
paired yes/no answers also the exact McNemar p-value; ``p_holm`` is Holm's correction over every p-value of the
report (McNemar where there is one, else the bootstrap's), and ``note`` says when McNemar and the bootstrap
disagree about significance at 0.05. No torch.
"""
from __future__ import annotations

from collections import Counter

import json
from pathlib import Path

import pandas as pd

from hallufix import stats
from hallufix.stats import mcnemar_exact  # noqa: F401  (re-exported)

BASE_COLUMNS = ["run", "model", "methods", "task", "split", "metric", "value", "ci95_low", "ci95_high",
                "higher_is_better", "n", "seed", "partial"]
ALPHA = 0.05


class ReportError(ValueError):
    """A run directory that cannot be read: names the directory and what is wrong."""


def load_run(run_dir: str | Path) -> dict:
    """``results.json`` of a run directory, any schema version this hallufix reads (:class:`ReportError` if
    missing or malformed; :func:`hallufix.runner.results.read_results`)."""
    from hallufix.runner.results import ResultsError, read_results

    try:
        return read_results(run_dir)
    except ResultsError as exc:
        raise ReportError(str(exc)) from None


def methods_label(res: dict) -> str:
    """``clva+ara`` (stack order), or ``baseline`` for a run without methods."""
    return "+".join(m["name"] for m in res["methods"]) or "baseline"


def run_label(res: dict) -> str:
    """``clva alpha=10 beta=0.5``: the stack and its swept keys (a method's own keys without its prefix)."""
    stack = methods_label(res)
    parts = [stack]
    for k, v in sorted((res.get("swept") or {}).items()):
        if k != "plugins":
            head, _, rest = k.partition(".")
            parts.append(f"{rest if head in stack.split('+') and rest else k}={v}")
    return " ".join(parts)


def run_key(run_dir, res: dict) -> str:
    """The identity hash (runs written before identities: the folder's resolved path)."""
    return str(res.get("identity_hash") or Path(run_dir).resolve())


def comparison_key(res: dict):
    """What a run and its baseline must share: the identity without the methods."""
    ident = res.get("identity")
    if ident is None:
        return ("legacy", res["model"].get("id"), res["task"].get("name"))
    return json.dumps({k: v for k, v in ident.items() if k != "methods"}, sort_keys=True)


class Runs:
    """The runs of a report, deduplicated by identity: ``runs`` ``[(dir, results, label)]``, ``duplicates``
    ``[(dir, kept dir)]``; :meth:`records` / :meth:`units` read ``samples.jsonl`` once per run."""

    def __init__(self, run_dirs):
        self.runs, self.duplicates, seen = [], [], {}
        for d in run_dirs:
            res = load_run(d)
            key = run_key(d, res)
            if key in seen:
                self.duplicates.append((str(d), seen[key]))
                continue
            seen[key] = str(d)
            self.runs.append((str(d), res, run_label(res)))
        labels = [(lab, json.dumps([r["task"].get("name"), r.get("identity", {}).get("task_options")], default=str))
                  for _, r, lab in self.runs]
        self.runs = [(d, r, lab + (f" #{run_key(d, r)[:6]}" if labels.count(labels[i]) > 1 else ""))
                     for i, (d, r, lab) in enumerate(self.runs)]
        self._records, self._units = {}, {}

    def records(self, d: str) -> dict[str, dict]:
        if d not in self._records:
            self._records[d] = read_samples(d) if Path(d, "samples.jsonl").is_file() else {}
        return self._records[d]

    def units(self, d: str, res: dict):
        if d not in self._units:
            recs = self.records(d)
            self._units[d] = stats.units_of(d, res, recs) if recs else None
        return self._units[d]


def _wanted(res: dict) -> dict[str, set[str]]:
    return {s: {m for m, v in ms.items() if v.get("value") is not None} for s, ms in res["metrics"].items()}


def build_table(run_dirs, n_boot: int = 2000, seed: int = 0, runs: Runs | None = None) -> pd.DataFrame:
    """The tidy long table of every metric of every run with its bootstrap 95% interval (see the module
    docstring)."""
    runs = runs or Runs(run_dirs)
    rows, cfg_keys = [], set()
    for d, res, label in runs.runs:
        swept = res.get("swept") or {}
        cfg_keys.update(swept)
        units = runs.units(d, res)
        ci = stats.bootstrap(units, _wanted(res), n_boot=n_boot, seed=seed) if units is not None and n_boot else {}
        for split, metrics in res["metrics"].items():
            for metric, m in metrics.items():
                m = m if isinstance(m, dict) else {"value": m}
                lo, hi = ci.get((split, metric), {}).get("ci95", [None, None])
                row = {"run": label, "model": res["model"].get("id"), "methods": methods_label(res),
                       "task": res["task"].get("name"), "split": split, "metric": metric, "value": m.get("value"),
                       "ci95_low": lo, "ci95_high": hi, "higher_is_better": m.get("higher_is_better"),
                       "n": m.get("n"), "seed": res.get("seed"), "partial": m.get("partial")}
                row.update({f"cfg.{k}": v for k, v in swept.items()})
                rows.append(row)
    columns = BASE_COLUMNS + [f"cfg.{k}" for k in sorted(cfg_keys)]
    df = pd.DataFrame(rows, columns=columns)
    for c in columns:
        if c.startswith("cfg.") or c in ("value", "ci95_low", "ci95_high", "partial", "higher_is_better"):
            df[c] = pd.Series([row.get(c) for row in rows], dtype=object)  # 10 stays 10, None stays None
    return df


def pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Runs as columns, ``(task, split, metric)`` as rows (labels are unique per identity, so nothing is dropped)."""
    return df.pivot_table(index=["task", "split", "metric"], columns="run", values="value", aggfunc="first",
                          sort=False, dropna=False)


def read_samples(run_dir: str | Path) -> dict[str, dict]:
    """``{id: record}`` from a run's records (:func:`hallufix.runner.store.read_records`, the runner's own reader:
    the last record wins for a repeated id, a torn last line is not a finished sample); samples flagged by
    ``--on-nonfinite record`` are left out, as in the run's metrics."""
    from hallufix.errors import RunDirError
    from hallufix.runner.store import SAMPLES, read_records, shard_files

    if not Path(run_dir, SAMPLES).is_file() and not shard_files(run_dir):
        raise ReportError(f"{run_dir} has no samples.jsonl")
    try:
        recs = read_records(run_dir, keep_aside=False)
    except RunDirError as exc:
        raise ReportError(str(exc)) from None
    return {k: r for k, r in recs.items() if not r.get("nonfinite")}


def paired_comparison(baseline_dir, run_dir, n_boot: int = 2000, seed: int = 0, split: str | None = None) -> dict:
    """Accuracy of ``run_dir`` vs ``baseline_dir`` on the yes/no samples both hold (matched by ``id``; only
    ``split`` if given): ``n``, ``accuracy_baseline``, ``accuracy_run``, ``accuracy_diff``, ``only_baseline_right``,
    ``only_run_right``, ``mcnemar_p`` (exact) and ``ci95`` (paired bootstrap); ``{}`` when nothing matches."""
    a, b = read_samples(baseline_dir), read_samples(run_dir)
    ids = [i for i in sorted(set(a) & set(b)) if a[i].get("answer") is not None
           and (split in (None, "all") or a[i].get("split") == split)]
    if not ids:
        return {}
    fake = {"metrics": {"all": {"accuracy": {"value": 0}}}}
    ua = stats.units_of(baseline_dir, fake, {i: {**a[i], "split": "all"} for i in ids})
    ub = stats.units_of(run_dir, fake, {i: {**b[i], "split": "all"} for i in ids})
    ra, rb = stats.correctness(ua)["all"], stats.correctness(ub)["all"]
    boot = stats.bootstrap(ua, {"all": {"accuracy"}}, other=ub, n_boot=n_boot, seed=seed)[("all", "accuracy")]
    only_base, only_run = int((ra & ~rb).sum()), int((rb & ~ra).sum())
    return {"n": len(ids), "accuracy_baseline": float(ra.mean()), "accuracy_run": float(rb.mean()),
            "accuracy_diff": float(rb.mean() - ra.mean()), "only_baseline_right": only_base,
            "only_run_right": only_run, "mcnemar_p": mcnemar_exact(only_base, only_run), "ci95": boot["ci95"]}


def compare_to_baseline(run_dirs, n_boot: int = 2000, seed: int = 0, runs: Runs | None = None) -> pd.DataFrame:
    """Per metric, every run against its baseline (see the module docstring). Columns: ``run, methods, model,
    task, split, metric, baseline, value, diff, higher_is_better, better, n_paired, ci95_low, ci95_high,
    bootstrap_p, mcnemar_p, p_holm, note``. Empty when no run has a baseline."""
    runs = runs or Runs(run_dirs)
    baselines: dict = {}
    for d, r, _ in runs.runs:
        if not r["methods"]:
            baselines.setdefault(comparison_key(r), (d, r))
    rows = []
    for d, r, label in runs.runs:
        if not r["methods"] or comparison_key(r) not in baselines:
            continue
        bdir, bres = baselines[comparison_key(r)]
        same = _same_samples(runs, bdir, bres, d, r)
        paired = _paired_stats(runs, bdir, bres, d, r, n_boot, seed) if same is True else {}
        for split, metrics in r["metrics"].items():
            for metric, m in metrics.items():
                if metric not in bres["metrics"].get(split, {}):
                    continue
                value, bval = m.get("value"), bres["metrics"][split][metric].get("value")
                hib = m.get("higher_is_better")
                diff = value - bval if value is not None and bval is not None and same is True else None
                row = {"run": label, "methods": methods_label(r), "model": r["model"].get("id"),
                       "task": r["task"].get("name"), "split": split, "metric": metric, "baseline": bval,
                       "value": value, "diff": diff, "higher_is_better": hib,
                       "better": None if hib is None or not diff else (diff > 0) == bool(hib),
                       "n_paired": None, "ci95_low": None, "ci95_high": None, "bootstrap_p": None,
                       "mcnemar_p": None, "p_holm": None, "note": same if same is not True else None}
                row.update(paired.get((split, metric), {}))
                rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        primary = [m if m == m and m is not None else b for m, b in zip(df["mcnemar_p"], df["bootstrap_p"])]
        df["p_holm"] = stats.holm([None if p is None or p != p else float(p) for p in primary])
        df["note"] = [n if n else _disagreement(row) for n, (_, row) in zip(df["note"], df.iterrows())]
    return df


def _same_samples(runs: Runs, bdir, bres, d, r):
    """``True``, or the reason a baseline comparison is refused (different sample sets)."""
    hb, hr = bres.get("sample_ids_sha256"), r.get("sample_ids_sha256")
    if hb is not None and hr is not None:
        if hb == hr:
            return True
    elif set(runs.records(bdir)) == set(runs.records(d)):
        return True
    nb, nr = bres["task"].get("n"), r["task"].get("n")
    return (f"not compared: the baseline ({bdir}) holds {nb} samples, this run {nr} — other samples (rerun both "
            f"with the same --limit)")


def _paired_stats(runs: Runs, bdir, bres, d, r, n_boot, seed) -> dict:
    ub, ur = runs.units(bdir, bres), runs.units(d, r)
    if ub is None or ur is None or ub.kind != ur.kind:
        return {}
    keys = [k for k in ub.keys if k in set(ur.keys)]
    ub, ur = ub.subset(keys), ur.subset(keys)
    wanted = {s: _wanted(r).get(s, set()) & _wanted(bres).get(s, set()) for s in r["metrics"]}
    per_split = Counter(ub.strata)  # pairs behind each split's row (a sample may be scored in several splits)
    out = {}
    for key, v in (stats.bootstrap(ub, wanted, other=ur, n_boot=n_boot, seed=seed) if n_boot else {}).items():
        n = per_split[key[0]] if key[0] in per_split else len(keys)
        out[key] = {"n_paired": n, "ci95_low": v["ci95"][0], "ci95_high": v["ci95"][1], "bootstrap_p": v["p"]}
    cb, cr = stats.correctness(ub), stats.correctness(ur)
    if cb is not None:
        metric = "accuracy" if ub.kind == "yesno" else "acc"
        for split in cb:
            b_only, r_only = int((cb[split] & ~cr[split]).sum()), int((cr[split] & ~cb[split]).sum())
            out.setdefault((split, metric), {"n_paired": per_split[split]})["mcnemar_p"] = mcnemar_exact(b_only,
                                                                                                         r_only)
    return out


def _disagreement(row) -> str | None:
    """One sentence when McNemar and the bootstrap interval disagree about significance at :data:`ALPHA`."""
    p, lo, hi = row.get("mcnemar_p"), row.get("ci95_low"), row.get("ci95_high")
    if p is None or p != p or lo is None or lo != lo:
        return None
    by_mcnemar, by_ci = p < ALPHA, not (lo <= 0 <= hi)
    if by_mcnemar == by_ci:
        return None
    return (f"McNemar (exact, p={p:.3g}) and the paired bootstrap (95% interval [{lo:.4g}, {hi:.4g}]) disagree: "
            f"McNemar uses only the discordant pairs, the bootstrap the whole paired difference; near the "
            f"threshold report both and read the difference as {'' if by_ci else 'not '}established by its interval")


#: Former name of :func:`compare_to_baseline`.
comparisons = compare_to_baseline
