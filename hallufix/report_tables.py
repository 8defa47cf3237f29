"""Paper tables: one per task (and task options), methods as rows, metrics as columns.

* Rows: the runs of the task, the baseline first, then by label; the swept config keys as leading columns.
* Metric columns: every metric with a declared direction except raw counts (``--metrics`` picks a subset, in that
  order). Fractions the community prints as percentages (POPE accuracy / precision / recall / F1, yes-ratio, ...)
  are ×100; CHAIR and MME are already in percent / points. Each value is ``mean ± half-width of its 95% bootstrap
  interval`` (:mod:`hallufix.stats`); the best value of a column (by the metric's direction) is bold.
* Overhead columns: ms per generated token, s per sample, the per-token time relative to the baseline of the table
  (``x base``) and peak memory (MiB: CUDA's max allocated during the run on a GPU; on a CPU the process's peak
  RSS, which also covers earlier runs of the same process), all from ``timing.jsonl`` via ``results.json``.
* Caption: task and options, model and family, n, decoding (greedy, max new tokens), dtype, seed, the
  ``--limit`` warning, and how to read the numbers.

LaTeX output needs ``\\usepackage{booktabs}`` (``\\toprule`` / ``\\midrule`` / ``\\bottomrule``); nothing else.
The CSV (``table_<task>.csv``) keeps full precision, every config column and both interval ends.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

COUNTS = {"tp", "fp", "tn", "fn", "n", "mentions", "length"}
FRACTIONS = {"accuracy", "precision", "recall", "f1", "mean_f1", "yes_ratio", "exact_match", "fp_rate_partner",
             "fp_rate_other"}
LABELS = {"accuracy": "Acc", "precision": "Prec", "recall": "Rec", "f1": "F1", "mean_f1": "mean F1",
          "yes_ratio": "Yes", "chair_s": "CHAIR_S", "chair_i": "CHAIR_I", "acc": "acc", "acc_plus": "acc+"}
OVERHEAD = [("ms/token", "ms_per_token"), ("s/sample", "s_per_sample"), ("x base", "x_base"),
            ("peak MiB", "peak_mem_mb")]


def _scale(task_metrics: set[str], metric: str) -> float:
    return 100.0 if metric in FRACTIONS and "chair_s" not in task_metrics else 1.0


def metric_columns(long: pd.DataFrame, only: list[str] | None = None) -> list[tuple[str, str]]:
    """``[(split, metric)]`` of a task's table, in the order the runs report them."""
    rows = long[long["higher_is_better"].notna() & ~long["metric"].isin(COUNTS)]
    cols = list(dict.fromkeys(zip(rows["split"], rows["metric"])))
    if only:
        cols = [c for name in only for c in cols if c[1] == name or f"{c[0]}/{c[1]}" == name]
    return cols


def task_tables(long: pd.DataFrame, runs, only: list[str] | None = None, n_boot: int = 2000) -> list[dict]:
    """One table per task group: ``{"name", "frame" (numbers, CSV), "cells" (display), "best", "caption"}``."""
    out = []
    for task, sub in long.groupby("task", sort=False):
        res_by_label = {label: (d, res) for d, res, label in runs.runs if res["task"].get("name") == task}
        cfg = [c for c in sub.columns if c.startswith("cfg.") and c != "cfg.plugins" and sub[c].notna().any()]
        first = sub.drop_duplicates("run").set_index("run")
        labels = sorted(first.index, key=lambda lab: (lab.split(" ")[0] != "baseline", lab.split(" ")[0],
                                                     [_sort_key(first.loc[lab, c]) for c in cfg]))
        cols = metric_columns(sub, only)
        names = set(sub["metric"])
        frame_rows, cells = [], []
        base_tok = None
        for lab in labels:
            d, res = res_by_label[lab]
            o = res.get("overhead") or {}
            if not res["methods"] and base_tok is None:
                base_tok = o.get("wall_s_per_token")
        for lab in labels:
            d, res = res_by_label[lab]
            r = sub[sub["run"] == lab]
            frame = {"method": lab.split(" ")[0], "run": lab, "dir": d}
            frame.update({c[4:]: r[c].iloc[0] for c in cfg})
            shown = {"method": lab.split(" ")[0], **{c[4:]: _text(r[c].iloc[0]) for c in cfg}}
            for split, metric in cols:
                m = r[(r["split"] == split) & (r["metric"] == metric)]
                key = _col(split, metric)
                if m.empty or m["value"].iloc[0] is None or pd.isna(m["value"].iloc[0]):
                    frame[key] = None
                    shown[key] = "--"
                    continue
                k = _scale(names, metric)
                v, lo, hi = (float(m[c].iloc[0]) * k if pd.notna(m[c].iloc[0]) else None
                             for c in ("value", "ci95_low", "ci95_high"))
                frame.update({key: v, f"{key} ci95_low": lo, f"{key} ci95_high": hi})
                shown[key] = (v, None if lo is None else (hi - lo) / 2)
            o = res.get("overhead") or {}
            tok, samp = o.get("wall_s_per_token"), o.get("wall_s_per_sample")
            over = {"ms_per_token": tok * 1000 if tok else None, "s_per_sample": samp,
                    "x_base": tok / base_tok if tok and base_tok else None, "peak_mem_mb": o.get("peak_mem_mb")}
            frame.update(over)
            shown.update({name: _sig(over[key]) for name, key in OVERHEAD})
            frame_rows.append(frame)
            cells.append(shown)
        best = {}
        for split, metric in cols:
            key = _col(split, metric)
            hib = sub[(sub["split"] == split) & (sub["metric"] == metric)]["higher_is_better"].dropna()
            vals = [f[key] for f in frame_rows if f.get(key) is not None]
            if len(vals) >= 2 and not hib.empty and len(set(vals)) > 1:  # a column where all tie: no bold
                target = max(vals) if bool(hib.iloc[0]) else min(vals)
                best[key] = [i for i, f in enumerate(frame_rows) if f.get(key) is not None
                             and math.isclose(f[key], target, rel_tol=1e-12, abs_tol=1e-12)]
        header = ["method", *[c[4:] for c in cfg], *[_col(s, m) for s, m in cols], *[n for n, _ in OVERHEAD]]
        out.append({"name": task, "frame": pd.DataFrame(frame_rows), "cells": cells, "header": header,
                    "best": best, "n_cfg": len(cfg),
                    "caption": caption(task, [res_by_label[lab][1] for lab in labels], n_boot, _partials(sub, cols)),
                    "scaled": [_col(s, m) for s, m in cols if _scale(names, m) != 1.0]})
    return out


def _sort_key(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return (0, 0.0, "")
    try:
        return (1, float(v), "")
    except (TypeError, ValueError):
        return (2, 0.0, str(v))


def _col(split: str, metric: str) -> str:
    label = LABELS.get(metric, metric)
    return label if split == "all" else f"{split} {label}"


def _text(v) -> str:
    return "--" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _sig(v) -> str:
    if v is None:
        return "--"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _partials(sub: pd.DataFrame, cols) -> list[str]:
    """``"hallucination: partial: missing count, ..."`` once per metric column some run could not total."""
    notes = {}
    for split, metric in cols:
        m = sub[(sub["split"] == split) & (sub["metric"] == metric) & sub["partial"].notna()]
        if not m.empty:
            notes[_col(split, metric)] = m["partial"].iloc[0]
    return [f"{k}: {v}" for k, v in notes.items()]


def caption(task: str, results: list[dict], n_boot: int, partial: list[str] | None = None) -> str:
    """The table's caption (see the module docstring)."""
    r0 = results[0]
    ns = sorted({r["task"].get("n") for r in results})
    n = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}--{ns[-1]} (runs differ)"
    prov = r0.get("provenance") or {}
    gen = prov.get("generation") or {}
    opts = prov.get("task_options") or {}
    opt = f" ({', '.join(f'{k}={v}' for k, v in sorted(opts.items()))})" if opts else ""
    model = r0["model"]
    limit = f" First {prov['limit']} samples only (--limit): not comparable with full-set numbers." \
        if prov.get("limit") else ""
    peak = "CUDA max allocated" if str((r0.get("identity") or {}).get("device", "cpu")).startswith("cuda") \
        else "process peak RSS"
    return (f"{task}{opt} on {model.get('id')} ({model.get('family')}, {model.get('dtype')}), {n} samples, "
            f"{gen.get('decoding', 'greedy')} decoding, at most {gen.get('max_new_tokens', '?')} new tokens, seed "
            f"{r0.get('seed')}.{limit} Mean $\\pm$ half-width of the 95\\% bootstrap interval ({n_boot} resamples, "
            f"stratified by split); fractions $\\times$100; best in bold. Overhead per generated token and per "
            f"sample, x base = per-token time over the baseline's, peak memory = {peak} (MiB)."
            + ("".join(f" -- {escape(p)}." for p in partial or ())))


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\^{}", "\\": r"\textbackslash{}"}


def escape(text: str) -> str:
    return re.sub(r"[&%$#_{}~^\\]", lambda m: _LATEX_SPECIAL[m.group()], str(text))


def _cell_latex(value, bold: bool) -> str:
    if isinstance(value, tuple):
        v, ci = value
        body = f"{v:.1f}" + (f" \\pm {ci:.1f}" if ci is not None else "")
        return f"$\\mathbf{{{body}}}$" if bold else f"${body}$"
    return escape(value)


def to_latex(table: dict) -> str:
    """A booktabs ``table`` environment with caption and label."""
    header = table["header"]
    spec = "l" * (1 + table["n_cfg"]) + "r" * (len(header) - 1 - table["n_cfg"])
    lines = ["% hallufix report: needs \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering",
             f"\\caption{{{table['caption']}}}", f"\\label{{tab:{re.sub(r'[^A-Za-z0-9-]', '-', table['name'])}}}",
             f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(escape(h) for h in header) + " \\\\", "\\midrule"]
    for i, row in enumerate(table["cells"]):
        lines.append(" & ".join(_cell_latex(row.get(h, "--"), i in table["best"].get(h, [])) for h in header)
                     + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def to_markdown(table: dict) -> str:
    rows = []
    for i, row in enumerate(table["cells"]):
        out = []
        for h in table["header"]:
            v = row.get(h, "--")
            if isinstance(v, tuple):
                text = f"{v[0]:.1f}" + (f" ± {v[1]:.1f}" if v[1] is not None else "")
                v = f"**{text}**" if i in table["best"].get(h, []) else text
            out.append(v)
        rows.append(out)
    body = pd.DataFrame(rows, columns=table["header"]).to_markdown(index=False)
    text = table["caption"].replace("$", "").replace("\\pm", "±").replace("\\times", "×").replace("\\", "")
    return f"{body}\n\n{text}\n"


def write_tables(long: pd.DataFrame, out_dir, runs, formats=("csv", "md", "latex"), comparison=None,
                 only: list[str] | None = None, n_boot: int = 2000) -> list[Path]:
    """``metrics.csv`` (long table, every config column), per task ``table_<task>.{csv,md,tex}``, ``metrics.tex`` /
    ``metrics.md`` (all task tables), and ``comparison.{csv,md}``. Returns the written paths."""
    from hallufix.report import ReportError

    unknown = set(formats) - {"csv", "md", "latex"}
    if unknown:
        raise ReportError(f"unknown report formats {sorted(unknown)}; known: csv, md, latex")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(name: str, text: str) -> None:
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)

    tables = task_tables(long, runs, only, n_boot)
    if "csv" in formats:
        long.to_csv(out / "metrics.csv", index=False)
        written.append(out / "metrics.csv")
    for t in tables:
        stem = "table_" + re.sub(r"[^A-Za-z0-9_.-]", "_", t["name"])
        if "csv" in formats:
            t["frame"].to_csv(out / f"{stem}.csv", index=False)
            written.append(out / f"{stem}.csv")
        if "md" in formats:
            put(f"{stem}.md", to_markdown(t))
        if "latex" in formats:
            put(f"{stem}.tex", to_latex(t))
    if "md" in formats:
        put("metrics.md", "\n".join(to_markdown(t) for t in tables))
    if "latex" in formats:
        put("metrics.tex", "\n".join(to_latex(t) for t in tables))
    if comparison is not None and not comparison.empty:
        if "csv" in formats:
            comparison.to_csv(out / "comparison.csv", index=False)
            written.append(out / "comparison.csv")
        if "md" in formats:
            put("comparison.md", comparison.drop(columns=["model"]).to_markdown(index=False, floatfmt=".4g") + "\n")
    return written
