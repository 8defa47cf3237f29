"""``hallufix score pope|mme|chair``: score prediction files from any pipeline exactly as the community does.

Outputs a readable table, or with ``--json`` one JSON object (keys documented per benchmark in
``docs/benchmarks.md``). Bad input (missing file, malformed line, unknown parser) exits with status 2 and a
message naming the file and line.
"""
from __future__ import annotations

import json
from pathlib import Path

from hallufix.cli import CliError


def register(sub) -> None:
    p = sub.add_parser("score", help="score prediction files (POPE, MME, CHAIR) from any pipeline",
                       description="Score prediction files with the published rules (see docs/benchmarks.md).")
    ssub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    p.set_defaults(handler=lambda args: p.print_help() or 0)

    pope = ssub.add_parser(
        "pope", help="POPE: accuracy, precision, recall, F1, yes-ratio, counts per split; mean F1",
        epilog="example: hallufix score pope --questions data/pope/coco_llava15 "
               "--answers llava-v1.5-13b.jsonl --json")
    pope.add_argument("--questions", action="append", required=True, metavar="FILE_OR_DIR",
                      help="label file (JSONL or JSON array) or folder of *_pope_<split>.json; may be repeated, "
                           "e.g. to add LLaVA's llava_pope_test.jsonl (question id -> category)")
    pope.add_argument("--answers", required=True, metavar="FILE",
                      help="JSONL with question_id and text (LLaVA answer files; ids in LLaVA's offset numbering "
                           "or the label file's)")
    pope.add_argument("--parser", default="pope", help="answer parser: pope (default), opera, vcd, lmms-eval")
    pope.add_argument("--json", action="store_true", help="print one JSON object")
    pope.set_defaults(handler=_pope)

    mme = ssub.add_parser(
        "mme", help="MME: acc / acc+ / score per subtask; perception, cognition, hallucination subset",
        epilog="example: hallufix score mme --ground-truth eval_tool/Your_Results --answers eval_tool/LaVIN --json")
    mme.add_argument("--ground-truth", required=True, metavar="DIR",
                     help="eval_tool Your_Results folder (<subtask>.txt: image, question, Yes/No)")
    mme.add_argument("--answers", required=True, metavar="FILE_OR_DIR",
                     help="eval_tool folder with a 4th response column, or a LLaVA answer JSONL (with --questions)")
    mme.add_argument("--questions", default=None, metavar="FILE", help="LLaVA's question JSONL for a JSONL --answers")
    mme.add_argument("--json", action="store_true", help="print one JSON object")
    mme.set_defaults(handler=_mme)

    ch = ssub.add_parser(
        "chair", help="CHAIR: CHAIR_s, CHAIR_i, recall (x100), length",
        epilog="example: hallufix score chair --captions caps.jsonl --gt-objects chair_gt.json --json")
    ch.add_argument("--captions", required=True, metavar="FILE", help="JSONL with image_id and caption")
    gt = ch.add_mutually_exclusive_group(required=True)
    gt.add_argument("--gt-objects", default=None, metavar="FILE", help="prebuilt {image_id: [objects]} JSON(.gz)")
    gt.add_argument("--coco-annotations", default=None, metavar="DIR",
                    help="folder with COCO 2014 instances_*2014.json and captions_*2014.json")
    ch.add_argument("--normaliser", default="nltk", help="nltk (OPERA / lmms-eval; default) or pattern (original)")
    ch.add_argument("--synonyms", default=None, metavar="FILE",
                    help="synonym table in synonyms.txt format (default: the COCO one shipped with hallufix)")
    ch.add_argument("--json", action="store_true", help="print one JSON object")
    ch.set_defaults(handler=_chair)


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
    return 0


def pope_result(questions: list[str], answers: str, parser: str = "pope") -> dict:
    """``{split: {accuracy, precision, recall, f1, yes_ratio, tp, fp, tn, fn, n}, "mean_f1": float}``."""
    from hallufix.scoring.pope import PARSERS, parse_yes_no, score_splits
    from hallufix.tasks.base import TaskError
    from hallufix.tasks.pope import is_combined, join_answers, load_labels

    if parser not in PARSERS:
        raise CliError(f"unknown POPE parser '{parser}'; known: {', '.join(PARSERS)}")
    labels: dict = {}
    combined = None
    try:
        for q in questions:
            p = Path(q)
            if not p.exists():
                raise CliError(f"file not found: {p}")
            recs = _records(q) if p.is_file() else None
            if recs is not None and is_combined(recs) and not any("label" in r for r in recs):
                combined = recs
            else:
                labels.update(load_labels(q))
        if not labels:
            raise CliError("no POPE label file among --questions (give coco_pope_<split>.json files or their folder)")
        pairs = join_answers(labels, _records(answers), combined, where=answers)
    except TaskError as exc:
        raise CliError(str(exc)) from None
    rows = [(split, label, parse_yes_no(text, parser, label=label)) for split, items in pairs.items()
            for label, text in items]
    res = score_splits(rows)
    out = {split: m for split, m in res.items() if split != "all"}
    out["mean_f1"] = res["all"]["mean_f1"]
    return out


def _pope(args) -> int:
    out = pope_result(args.questions, args.answers, args.parser)

    def table(o):
        print(f"{'split':<12} {'n':>5} {'acc':>8} {'prec':>8} {'rec':>8} {'f1':>8} {'yes':>8}   tp/fp/tn/fn")
        for s, m in o.items():
            if s != "mean_f1":
                print(f"{s:<12} {m['n']:>5} {m['accuracy']:>8.4f} {m['precision']:>8.4f} {m['recall']:>8.4f} "
                      f"{m['f1']:>8.4f} {m['yes_ratio']:>8.4f}   {m['tp']}/{m['fp']}/{m['tn']}/{m['fn']}")
        print(f"mean F1 over splits: {o['mean_f1']:.6f}")

    return _emit(out, args.json, table)


def mme_result(ground_truth: str, answers: str, questions: str | None = None) -> dict:
    """``{perception, cognition, hallucination, object_level, attribute_level, subtasks: {name: {acc, acc_plus,
    score, n}}}`` (acc and acc+ in percent, scores in points)."""
    from hallufix.scoring.mme import mme_scores
    from hallufix.tasks.base import TaskError
    from hallufix.tasks.mme import join_eval_tool, join_llava, read_eval_tool

    try:
        gt = read_eval_tool(ground_truth, with_response=False)
        ans = Path(answers)
        if ans.is_dir():
            rows = join_eval_tool(gt, read_eval_tool(ans, with_response=True), str(ans))
        elif ans.is_file():
            if not questions:
                raise CliError("a JSONL --answers needs --questions (LLaVA's MME question JSONL) to join on")
            rows = join_llava(gt, _records(questions), _records(answers), answers)
        else:
            raise CliError(f"file not found: {ans}")
        return mme_scores(rows)
    except (TaskError, ValueError) as exc:
        raise CliError(str(exc)) from None


def _mme(args) -> int:
    res = mme_result(args.ground_truth, args.answers, args.questions)

    def table(o):
        print(f"{'subtask':<24} {'acc':>7} {'acc+':>7} {'score':>7}")
        for sub, m in o["subtasks"].items():
            print(f"{sub:<24} {m['acc']:7.2f} {m['acc_plus']:7.2f} {m['score']:7.2f}")
        print(f"perception {o['perception']:.4f}  cognition {o['cognition']:.4f}  hallucination "
              f"{o['hallucination']:.4f}")

    return _emit(res, args.json, table)


def chair_result(captions: str, gt_objects: str | None = None, coco_annotations: str | None = None,
                 normaliser: str = "nltk", synonyms: str | None = None) -> dict:
    """``{chair_s, chair_i, recall (percent), length (tokens), n (captions)}``."""
    from hallufix.scoring.chair import ChairScorer
    from hallufix.scoring.wordnet import WordNetMissing
    from hallufix.tasks.base import TaskError
    from hallufix.tasks.chair import build_gt_from_coco, load_gt_table

    try:
        if synonyms and not Path(synonyms).is_file():
            raise CliError(f"file not found: {synonyms}")
        scorer = ChairScorer.coco(normaliser, synonyms)
        recs = _records(captions)
        caps = []
        for i, c in enumerate(recs, 1):
            if "image_id" not in c or "caption" not in c:
                raise CliError(f"{captions}: record {i} lacks 'image_id' or 'caption'")
            caps.append((int(c["image_id"]), str(c["caption"])))
        if not caps:
            raise CliError(f"{captions}: no captions")
        if gt_objects:
            if not Path(gt_objects).is_file():
                raise CliError(f"file not found: {gt_objects}")
            gt = load_gt_table(gt_objects)
        else:
            if not Path(coco_annotations).is_dir():
                raise CliError(f"folder not found: {coco_annotations}")
            gt = build_gt_from_coco(coco_annotations, scorer)
        res = scorer.score(caps, gt)
    except (TaskError, WordNetMissing) as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise CliError(f"{captions}: {exc}") from None
    return {k: res[k] for k in ("chair_s", "chair_i", "recall", "length", "n")}


def _chair(args) -> int:
    out = chair_result(args.captions, args.gt_objects, args.coco_annotations, args.normaliser, args.synonyms)
    return _emit(out, args.json, lambda o: print(
        f"CHAIR_s {o['chair_s']:.2f}  CHAIR_i {o['chair_i']:.2f}  recall {o['recall']:.2f}  "
        f"length {o['length']:.2f}  n {o['n']}"))
