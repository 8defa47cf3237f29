"""``hallufix score repope``: POPE answers scored under POPE's and RePOPE's labels (from the user's files).

Each subcommand prints a table, or with ``--json`` one JSON object (keys in ``docs/benchmarks.md``). Bad input exits
with status 2 and a message naming the file and what to fix.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from hallufix.cli import CliError


def register(ssub) -> None:
    rp = ssub.add_parser(
        "repope", help="RePOPE: the same POPE answers scored under POPE's and RePOPE's labels",
        epilog="example: hallufix score repope --questions data/pope/coco_llava15 --answers llava-v1.5-13b.jsonl "
               "--repope-labels RePOPE/annotations --json", formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("--questions", action="append", required=True, metavar="FILE_OR_DIR",
                    help="POPE label files or their folder (and LLaVA's llava_pope_test.jsonl), as for score pope")
    rp.add_argument("--answers", required=True, metavar="FILE", help="JSONL with question_id and text")
    rp.add_argument("--repope-labels", required=True, metavar="FILE_OR_DIR",
                    help="RePOPE's annotations/ folder (coco_repope_<split>.json)")
    rp.add_argument("--parser", default="pope", help="pope (default), opera, vcd, lmms-eval, repope")
    rp.add_argument("--json", action="store_true", help="print one JSON object")
    rp.set_defaults(handler=_repope)


def repope_result(questions: list[str], answers: str, repope_labels: str, parser: str = "pope") -> dict:
    """``{split: metrics, "repope-<split>": metrics, mean_f1, repope_mean_f1, coverage}``; ``coverage`` per split:
    RePOPE questions, and how many of them the answers cover (fewer when the answers are for another POPE
    version, e.g. LLaVA-1.5's random split)."""
    from hallufix.cli.score import _records, pope_labels
    from hallufix.scoring.repope import PARSERS, parse, score_both
    from hallufix.tasks.base import TaskError
    from hallufix.tasks.pope import join_answers
    from hallufix.tasks.repope import load_repope, object_key

    if parser not in PARSERS:
        raise CliError(f"unknown parser '{parser}'; known: {', '.join(PARSERS)}")
    if not Path(answers).is_file():
        raise CliError(f"file not found: {answers}")
    if not Path(repope_labels).exists():
        raise CliError(f"file not found: {repope_labels}")
    try:
        labels, combined = pope_labels(questions)
        pairs = join_answers(labels, _records(answers), combined, where=answers)
        relabels = load_repope(repope_labels)
        rows, covered = [], {}
        for split, items in pairs.items():
            for rec, (label, text) in zip(labels[split], items):
                new = relabels.get(split, {}).get(object_key(rec["image"], rec["text"]))
                covered[split] = covered.get(split, 0) + (new is not None)
                rows.append((split, label, new, parse(text, parser, label=label)))
    except TaskError as exc:
        raise CliError(str(exc)) from None
    res = score_both(rows, parser)
    out = {s: m for s, m in res.items() if s != "all"}
    out.update(res["all"])
    out["coverage"] = {s: {"repope_questions": len(relabels.get(s, {})), "answered": covered.get(s, 0)}
                       for s in sorted(pairs)}
    return out


def _repope(args) -> int:
    from hallufix.cli.score import _emit

    out = repope_result(args.questions, args.answers, args.repope_labels, args.parser)

    def table(o):
        print(f"{'split':<20} {'n':>5} {'acc':>8} {'prec':>8} {'rec':>8} {'f1':>8} {'yes':>8}   tp/fp/tn/fn")
        for s, m in o.items():
            if isinstance(m, dict) and "f1" in m:
                print(f"{s:<20} {m['n']:>5} {m['accuracy']:>8.4f} {m['precision']:>8.4f} {m['recall']:>8.4f} "
                      f"{m['f1']:>8.4f} {m['yes_ratio']:>8.4f}   {m['tp']}/{m['fp']}/{m['tn']}/{m['fn']}")
        print(f"mean F1: POPE labels {o['mean_f1']:.6f}, RePOPE labels {o['repope_mean_f1']:.6f}")
        for s, c in o["coverage"].items():
            if c["answered"] < c["repope_questions"]:
                print(f"note: {s}: the answers cover {c['answered']} of {c['repope_questions']} RePOPE questions "
                      f"(answers for another POPE version)")

    return _emit(out, args.json, table)
