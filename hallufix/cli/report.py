"""``hallufix report RUN_DIRS...``: the tidy long table (CSV), pivots (Markdown, LaTeX) and paired comparisons
with the baseline run (the run without methods)."""
from __future__ import annotations

from pathlib import Path

from hallufix.cli import CliError


def register(sub) -> None:
    p = sub.add_parser("report", help="tables from run directories (CSV, Markdown, LaTeX) and paired comparisons",
                       epilog="example: hallufix report runs/builtin-shapes-pope/* --output tables/ --format csv,md")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each with results.json)")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="folder for metrics.{csv,md,tex} and comparison.{csv,md,tex} (default: print Markdown)")
    p.add_argument("--format", default="csv,md,latex", help="comma-separated subset of csv, md, latex")
    p.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples (default 2000)")
    p.set_defaults(handler=_report)


def _report(args) -> int:
    from hallufix.report import ReportError, compare_to_baseline, pivot, write_tables

    missing = [d for d in args.runs if not Path(d).is_dir()]
    if missing:
        raise CliError(f"not a run directory: {', '.join(missing)}")
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    try:
        from hallufix.report import build_table

        df = build_table(args.runs)
        cmp = compare_to_baseline(args.runs, n_boot=args.bootstrap)
        if args.output:
            written = write_tables(df, args.output, formats, comparison=cmp)
            print("wrote " + ", ".join(str(w) for w in written))
            return 0
    except ReportError as exc:
        raise CliError(str(exc)) from None
    print(pivot(df).to_markdown(floatfmt=".4f"))
    if not cmp.empty:
        print("\ncomparison with the baseline (run - baseline; paired tests on accuracy of yes/no tasks):")
        print(cmp.drop(columns=["model"]).to_markdown(index=False, floatfmt=".4f"))
    return 0
