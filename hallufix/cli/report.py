"""``hallufix report RUN_DIRS...``: runs joined by identity; paper tables (methods × metrics, ±95% CI, best in
bold, overhead per token; CSV / Markdown / LaTeX with booktabs), the long table, and paired comparisons with the
baseline (paired bootstrap on every metric, exact McNemar on paired yes/no answers, Holm-corrected)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hallufix.cli import CliError


def register(sub) -> None:
    p = sub.add_parser("report", help="paper tables (CSV, Markdown, LaTeX) and paired comparisons from run folders",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       epilog="example: hallufix report runs/builtin-shapes-pope/* --output tables/")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each with results.json)")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="folder for table_<task>.{csv,md,tex}, metrics.{csv,md,tex}, comparison.{csv,md} "
                        "(default: print Markdown)")
    p.add_argument("--format", default="csv,md,latex", help="comma-separated subset of csv, md, latex")
    p.add_argument("--metrics", default=None,
                   help="metric columns of the paper tables, in order (e.g. f1,mean_f1 or random/f1; default: "
                        "every metric with a direction except counts)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (0: no intervals or tests)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.set_defaults(handler=_report)


def _report(args) -> int:
    from hallufix.report import ReportError, Runs, build_table, compare_to_baseline
    from hallufix.report_tables import task_tables, to_markdown, write_tables

    missing = [d for d in args.runs if not Path(d).is_dir()]
    if missing:
        raise CliError(f"not a run directory: {', '.join(missing)}")
    if args.bootstrap < 0:
        raise CliError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    only = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    try:
        runs = Runs(args.runs)
        for dup, kept in runs.duplicates:
            print(f"hallufix: warning: {dup} holds the same run as {kept} (same identity) — reported once",
                  file=sys.stderr)
        df = build_table(args.runs, n_boot=args.bootstrap, seed=args.seed, runs=runs)
        cmp = compare_to_baseline(args.runs, n_boot=args.bootstrap, seed=args.seed, runs=runs)
        _warn(cmp, runs)
        if args.output:
            written = write_tables(df, args.output, runs, formats, comparison=cmp, only=only, n_boot=args.bootstrap)
            print("wrote " + ", ".join(str(w) for w in written))
            return 0
        for t in task_tables(df, runs, only, args.bootstrap):
            print(to_markdown(t))
    except ReportError as exc:
        raise CliError(str(exc)) from None
    if not cmp.empty:
        print("comparison with the baseline (run - baseline; paired bootstrap 95% interval, exact McNemar on "
              "accuracy, Holm-corrected p_holm):")
        shown = cmp[cmp["higher_is_better"].notna()]  # counts (tp, fp, n, ...) stay in comparison.csv
        print(shown.drop(columns=["model", "note"]).to_markdown(index=False, floatfmt=".4g"))
    return 0


def _warn(cmp, runs) -> None:
    with_baseline = set(cmp["run"]) if not cmp.empty else set()
    for _, res, label in runs.runs:
        if res["methods"] and label not in with_baseline:
            print(f"hallufix: warning: {label} ({res['task'].get('name')}): no baseline run with the same model, "
                  f"task options, generation settings and seed — not compared", file=sys.stderr)
    if cmp.empty:
        return
    for note in dict.fromkeys(n for n in cmp["note"] if n):
        print(f"hallufix: note: {note}", file=sys.stderr)
