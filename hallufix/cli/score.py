"""``hallufix score pope|mme``, and ``chair|repope|amber|hallusionbench|mmhal`` (:mod:`._score_chair`,
:mod:`._score_repope`, :mod:`._score_amber_hb`, :mod:`._score_mmhal`): score prediction files from any pipeline exactly as the community does.

Reads LLaVA's answer files, the MME eval_tool folders, caption JSONL and lmms-eval sample logs (``--log_samples``;
:mod:`hallufix.tasks.lmms_eval_log`); the accepted formats per benchmark are listed in ``docs/benchmarks.md``.

Outputs a readable table, or with ``--json`` one JSON object (keys documented per benchmark in
``docs/benchmarks.md``). Bad input (missing file, malformed line, unknown parser) exits with status 2 and a
message naming the file and line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hallufix.cli import CliError


def register(sub) -> None:
    p = sub.add_parser("score", help="score prediction files (POPE, MME, CHAIR, RePOPE, AMBER, HallusionBench, "
                                     "MMHal) from any pipeline",
                       description="Score prediction files with the published rules (see docs/benchmarks.md).")
    ssub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    p.set_defaults(handler=lambda args: p.print_help() or 0)

    pope = ssub.add_parser(
        "pope", help="POPE: accuracy, precision, recall, F1, yes-ratio, counts per split; mean F1",
        epilog="examples: hallufix score pope --questions data/pope/coco_llava15 "
               "--answers llava-v1.5-13b.jsonl --json\n"
               "          hallufix score pope --answers logs/x_samples_pope_adv.jsonl --answers "
               "logs/x_samples_pope_pop.jsonl --answers logs/x_samples_pope_random.jsonl --parser lmms-eval",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pope.add_argument("--questions", action="append", default=None, metavar="FILE_OR_DIR",
                      help="label file (JSONL or JSON array) or folder of *_pope_<split>.json; may be repeated, "
                           "e.g. to add LLaVA's llava_pope_test.jsonl (question id -> category); not needed for "
                           "lmms-eval sample logs, which carry the labels")
    pope.add_argument("--answers", action="append", required=True, metavar="FILE",
                      help="JSONL with question_id and text (LLaVA answer files; ids in LLaVA's offset numbering "
                           "or the label file's), or lmms-eval sample logs (<date>_samples_pope*.jsonl; repeat "
                           "for pope_full's pope_adv / pope_pop / pope_random)")
    pope.add_argument("--parser", default="pope", help="answer parser: pope (default), opera, vcd, lmms-eval")
    pope.add_argument("--json", action="store_true", help="print one JSON object")
    pope.set_defaults(handler=_pope)

    mme = ssub.add_parser(
        "mme", help="MME: acc / acc+ / score per subtask; perception, cognition, hallucination subset",
        epilog="examples: hallufix score mme --ground-truth eval_tool/Your_Results --answers eval_tool/LaVIN --json\n"
               "          hallufix score mme --ground-truth eval_tool/Your_Results --answers llava-v1.5-13b.jsonl\n"
               "          hallufix score mme --answers logs/x_samples_mme.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    mme.add_argument("--ground-truth", default=None, metavar="DIR",
                     help="eval_tool Your_Results folder (<subtask>.txt: image, question, Yes/No) or the "
                          "MME_Benchmark_release_version folder; not needed for an lmms-eval sample log")
    mme.add_argument("--answers", required=True, metavar="FILE_OR_DIR",
                     help="eval_tool folder with a 4th response column, a LLaVA answer JSONL (question in each "
                          "answer's 'prompt', as LLaVA's model_vqa_loader writes it), or an lmms-eval sample log")
    mme.add_argument("--questions", default=None, metavar="FILE",
                     help="LLaVA's llava_mme.jsonl, only for answer lines without a 'prompt' (matched by "
                          "question_id and order)")
    mme.add_argument("--parser", default="official",
                     help="response parser: official (calculation.py; default) or lmms-eval")
    mme.add_argument("--json", action="store_true", help="print one JSON object")
    mme.set_defaults(handler=_mme)


    from hallufix.cli import _score_amber_hb, _score_chair, _score_mmhal, _score_repope

    for more in (_score_chair, _score_repope, _score_amber_hb, _score_mmhal):
        more.register(ssub)


def _records(path: str) -> list[dict]:
    from hallufix.tasks.base import TaskError
    from hallufix.tasks.pope import read_records

    try:
        return read_records(Path(path))
    except TaskError as exc:
        raise CliError(str(exc)) from None


def _emit(obj: dict, as_json: bool, table) -> int:
    if as_json:
        print(json.dumps(obj, sort_keys=True))
    else:
        table(obj)
        for note in obj.get("notes", ()):
            print(f"note: {note}")
    return 0


def _is_log(path: str) -> bool:
    """Whether the file's first line is an lmms-eval sample-log line (anything unreadable: no)."""
    from hallufix.tasks.lmms_eval_log import is_sample_log

    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        rec = json.loads(first)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(rec, dict) and is_sample_log([rec])


def pope_labels(questions: list[str] | None) -> tuple[dict, list | None]:
    """``({split: label records}, LLaVA's combined question records or None)`` from ``--questions`` values."""
    from hallufix.tasks.pope import is_combined, load_labels

    if not questions:
        raise CliError("an answer file needs --questions (POPE label files or their folder)")
    labels: dict = {}
    combined = None
    for q in questions:
        qp = Path(q)
        if not qp.exists():
            raise CliError(f"file not found: {qp}")
        recs = _records(q) if qp.is_file() else None
        if recs is not None and is_combined(recs) and not any("label" in r for r in recs):
            combined = recs
        else:
            labels.update(load_labels(q))
    if not labels:
        raise CliError("no POPE label file among --questions (give coco_pope_<split>.json files or their folder)")
    return labels, combined


def pope_result(questions: list[str] | None, answers: str | list[str], parser: str = "pope") -> dict:
    """``{split: {accuracy, precision, recall, f1, yes_ratio, tp, fp, tn, fn, n}, "mean_f1": float}`` (plus
    ``notes`` for lmms-eval logs)."""
    from hallufix.scoring.pope import PARSERS, parse_yes_no, score_splits
    from hallufix.tasks.base import TaskError
    from hallufix.tasks.lmms_eval_log import NOTES, pope_pairs
    from hallufix.tasks.pope import join_answers

    if parser not in PARSERS:
        raise CliError(f"unknown POPE parser '{parser}'; known: {', '.join(PARSERS)}")
    answers = [answers] if isinstance(answers, str) else list(answers)
    for a in answers:
        if not Path(a).is_file():
            raise CliError(f"file not found: {a}")
    logs = [a for a in answers if _is_log(a)]
    try:
        if logs:
            if len(logs) != len(answers):
                raise CliError("give either lmms-eval sample logs or one answer file as --answers, not both")
            pairs: dict = {}
            for log in logs:
                split, items = pope_pairs(log)
                if split in pairs:
                    raise CliError(f"{log}: a second log of the {split} split")
                pairs[split] = items
        else:
            if len(answers) != 1:
                raise CliError("give one answer file (or several lmms-eval sample logs) as --answers")
            labels, combined = pope_labels(questions)
            pairs = join_answers(labels, _records(answers[0]), combined, where=answers[0])
    except TaskError as exc:
        raise CliError(str(exc)) from None
    rows = [(split, label, parse_yes_no(text, parser, label=label)) for split, items in pairs.items()
            for label, text in items]
    res = score_splits(rows)
    out = {split: m for split, m in res.items() if split != "all"}
    out["mean_f1"] = res["all"]["mean_f1"]
    if logs:
        out["notes"] = NOTES["pope"]
    return out


def _pope(args) -> int:
    out = pope_result(args.questions, args.answers, args.parser)

    def table(o):
        print(f"{'split':<12} {'n':>5} {'acc':>8} {'prec':>8} {'rec':>8} {'f1':>8} {'yes':>8}   tp/fp/tn/fn")
        for s, m in o.items():
            if s not in ("mean_f1", "notes"):
                print(f"{s:<12} {m['n']:>5} {m['accuracy']:>8.4f} {m['precision']:>8.4f} {m['recall']:>8.4f} "
                      f"{m['f1']:>8.4f} {m['yes_ratio']:>8.4f}   {m['tp']}/{m['fp']}/{m['tn']}/{m['fn']}")
        print(f"mean F1 over splits: {o['mean_f1']:.6f}")

    return _emit(out, args.json, table)


def mme_result(ground_truth: str | None, answers: str, questions: str | None = None, parser: str = "official"
               ) -> dict:
    """``{perception, cognition, hallucination, object_level, attribute_level, subtasks: {name: {acc, acc_plus,
    score, n}}}`` (acc and acc+ in percent, scores in points; ``notes`` for lmms-eval logs)."""
    from hallufix.scoring.mme import PARSERS, mme_scores
    from hallufix.tasks.base import TaskError
    from hallufix.tasks.lmms_eval_log import NOTES, mme_rows
    from hallufix.tasks.mme import join_eval_tool, join_llava, read_eval_tool, read_ground_truth

    if parser not in PARSERS:
        raise CliError(f"unknown MME parser '{parser}'; known: {', '.join(PARSERS)}")
    ans = Path(answers)
    notes = None
    try:
        if not ans.exists():
            raise CliError(f"file not found: {ans}")
        if ans.is_file() and _is_log(answers):
            rows, notes = mme_rows(ans), NOTES["mme"]
        elif ground_truth is None:
            raise CliError("--ground-truth is needed (eval_tool/Your_Results or MME_Benchmark_release_version) "
                           "unless --answers is an lmms-eval sample log")
        elif ans.is_dir():
            rows = join_eval_tool(read_ground_truth(ground_truth), read_eval_tool(ans, with_response=True), str(ans))
        else:
            rows = join_llava(read_ground_truth(ground_truth), _records(answers), answers,
                              _records(questions) if questions else None)
        out = mme_scores(rows, parser)
    except (TaskError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if notes:
        out["notes"] = notes
    return out


def _mme(args) -> int:
    res = mme_result(args.ground_truth, args.answers, args.questions, args.parser)

    def table(o):
        print(f"{'subtask':<24} {'acc':>7} {'acc+':>7} {'score':>7}")
        for sub, m in o["subtasks"].items():
            print(f"{sub:<24} {m['acc']:7.2f} {m['acc_plus']:7.2f} {m['score']:7.2f}")
        from hallufix.scoring.mme import partial_note

        print("  ".join(f"{k} {o[k]:.4f}" if o[k] is not None else f"{k} - ({partial_note(o['incomplete'], k)})"
                        for k in ("perception", "cognition", "hallucination")))

    return _emit(res, args.json, table)
