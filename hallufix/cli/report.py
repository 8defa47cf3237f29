"""``hallufix report RUN_DIRS...``: tidy table (CSV), pivot (Markdown, LaTeX), paired comparisons with the baseline."""
from __future__ import annotations

from pathlib import Path

from hallufix.cli import CliError


def register(sub) -> None:
    p = sub.add_parser("report", help="tables from run directories (CSV, Markdown, LaTeX) and paired comparisons",
                       epilog="example: hallufix report runs/builtin-shapes-pope/* --output tables/")
    p.add_argument("runs", nargs="+", help="run directories (each with results.json)")
    p.add_argument("--output", default=None, help="folder for metrics.csv / .md / .tex (default: print Markdown)")
    p.add_argument("--format", default="csv,md,latex")
    p.set_defaults(handler=_report)


def _report(args) -> int:
    from hallufix.report import build_table, comparisons, pivot, write_tables

    dirs = [d for d in args.runs if Path(d).is_dir()]
    if not dirs:
        raise CliError(f"no run directories among {args.runs}")
    try:
        df = build_table(dirs)
        cmp = comparisons(dirs)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    if args.output:
        written = write_tables(df, args.output, tuple(args.format.split(",")))
        if not cmp.empty:
            cmp.to_csv(Path(args.output) / "comparisons.csv", index=False)
            written.append(Path(args.output) / "comparisons.csv")
        print("wrote " + ", ".join(str(w) for w in written))
    else:
        print(pivot(df).to_markdown(floatfmt=".4f"))
    if not cmp.empty:
        print("\npaired comparison with the baseline (accuracy, matched samples):")
        print(cmp.to_markdown(index=False, floatfmt=".4f"))
    return 0
