"""``hallufix score pope|mme|chair``: score prediction files from any pipeline, as the community does."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from hallufix.cli import CliError


def register(sub) -> None:
    p = sub.add_parser("score", help="score prediction files (POPE, MME, CHAIR) from any pipeline")
    ssub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    pope = ssub.add_parser("pope", help="POPE: per split accuracy, precision, recall, F1, yes-ratio, counts; mean F1",
                           epilog="example: hallufix score pope --questions data/pope/coco_llava15 --questions "
                                  "llava_pope_test.jsonl --answers llava-v1.5-13b.jsonl --json")
    pope.add_argument("--questions", action="append", required=True,
                      help="label file or folder of *_pope_<split>.json; repeat to add LLaVA's combined question "
                           "file (question ids -> category)")
    pope.add_argument("--answers", required=True, help="JSONL with question_id and text (LLaVA answer files)")
    pope.add_argument("--parser", default="pope", help="pope (default), opera, vcd, lmms-eval")
    pope.add_argument("--json", action="store_true")
    pope.set_defaults(handler=_pope)
    mme = ssub.add_parser("mme", help="MME: acc / acc+ / score per subtask, perception, cognition, hallucination",
                          epilog="example: hallufix score mme --ground-truth eval_tool/Your_Results "
                                 "--answers eval_tool/LaVIN --json")
    mme.add_argument("--ground-truth", required=True, help="eval_tool Your_Results folder (image, question, GT)")
    mme.add_argument("--answers", required=True,
                     help="eval_tool 4-column folder, or a LLaVA answer JSONL (with --questions)")
    mme.add_argument("--questions", default=None, help="the LLaVA question JSONL for a JSONL --answers")
    mme.add_argument("--json", action="store_true")
    mme.set_defaults(handler=_mme)
    ch = ssub.add_parser("chair", help="CHAIR: CHAIR_s, CHAIR_i, recall, length (x100)",
                         epilog="example: hallufix score chair --captions caps.jsonl --gt-objects gt.json --json")
    ch.add_argument("--captions", required=True, help="JSONL with image_id and caption")
    ch.add_argument("--gt-objects", default=None, help="{image_id: [objects]} JSON or JSON.gz")
    ch.add_argument("--synonyms", default=None, help="synonym table (default: the COCO one shipped with hallufix)")
    ch.add_argument("--normaliser", default="identity", help="token normaliser (see docs/benchmarks.md)")
    ch.add_argument("--json", action="store_true")
    ch.set_defaults(handler=_chair)


def _jsonl(path: str) -> list[dict]:
    from hallufix.tasks.pope import read_records
    from hallufix.tasks.base import TaskError

    p = Path(path)
    if not p.is_file():
        raise CliError(f"file not found: {p}")
    try:
        return read_records(p)
    except TaskError as exc:
        raise CliError(str(exc)) from None


def _emit(obj: dict, as_json: bool, table) -> int:
    if as_json:
        print(json.dumps(obj, indent=None, sort_keys=True))
    else:
        table(obj)
    return 0


def _pope(args) -> int:
    from hallufix.scoring.pope import PARSERS, parse_yes_no, score_splits
    from hallufix.tasks.base import TaskError
    from hallufix.tasks.pope import join_answers, load_labels

    if args.parser not in PARSERS:
        raise CliError(f"unknown POPE parser '{args.parser}'; known: {', '.join(PARSERS)}")
    labels, combined = {}, None
    try:
        for q in args.questions:
            p = Path(q)
            recs = _jsonl(q) if p.is_file() else None
            if recs and "category" in recs[0] and "label" not in recs[0]:
                combined = recs  # LLaVA's combined question file: question id -> category
            else:
                labels.update(load_labels(q))
        pairs = join_answers(labels, _jsonl(args.answers), combined)
    except TaskError as exc:
        raise CliError(str(exc)) from None
    rows = [(split, label, parse_yes_no(text, args.parser, label=label)) for split, items in pairs.items()
            for label, text in items]
    res = score_splits(rows)
    out = {split: m for split, m in res.items() if split != "all"}
    out["mean_f1"] = res["all"]["mean_f1"]

    def table(o):
        print(f"{'split':<12} {'n':>5} {'acc':>8} {'prec':>8} {'rec':>8} {'f1':>8} {'yes':>8}   tp/fp/tn/fn")
        for s, m in o.items():
            if s != "mean_f1":
                print(f"{s:<12} {m['n']:>5} {m['accuracy']:>8.4f} {m['precision']:>8.4f} {m['recall']:>8.4f} "
                      f"{m['f1']:>8.4f} {m['yes_ratio']:>8.4f}   {m['tp']}/{m['fp']}/{m['tn']}/{m['fn']}")
        print(f"mean F1 over splits: {o['mean_f1']:.6f}")

    return _emit(out, args.json, table)


def _mme(args) -> int:
    from hallufix.scoring.mme import mme_scores
    from hallufix.tasks.base import TaskError
    from hallufix.tasks.mme import read_eval_tool

    try:
        gt = read_eval_tool(args.ground_truth, with_response=False)
        ans_path = Path(args.answers)
        if ans_path.is_dir():
            ans = read_eval_tool(ans_path, with_response=True)
            subtasks = {}
            for sub, rows in gt.items():
                if sub not in ans:
                    continue
                resp = {(r[0], r[1]): r[3] for r in ans[sub]}
                missing = [r for r in rows if (r[0], r[1]) not in resp]
                if missing:
                    raise CliError(f"{ans_path / (sub + '.txt')}: no response for {missing[0][0]!r} / "
                                   f"{missing[0][1]!r}")
                subtasks[sub] = [(r[0], r[2], resp[(r[0], r[1])].replace("\n", " ")) for r in rows]
        else:
            if not args.questions:
                raise CliError("a JSONL --answers needs --questions (the LLaVA question JSONL) to join on")
            qs = {q["question_id"]: q for q in _jsonl(args.questions)}
            by_key = {}
            for a in _jsonl(args.answers):
                q = qs.get(a["question_id"])
                if q is None:
                    raise CliError(f"answer question_id {a['question_id']} is not in {args.questions}")
                text = q.get("text", q.get("prompt", ""))
                base = text.split("\n")[0].replace(" Please answer yes or no.", "").strip()
                by_key[(q.get("category"), Path(q["image"]).stem, " ".join(base.split()))] = a["text"]
            subtasks = {}
            for sub, rows in gt.items():
                got = []
                for r in rows:
                    key = (sub, Path(r[0]).stem, " ".join(r[1].replace(" Please answer yes or no.", "").split()))
                    if key not in by_key:
                        raise CliError(f"no answer for {sub}/{r[0]}: {r[1]!r}")
                    got.append((r[0], r[2], by_key[key].replace("\n", " ")))
                subtasks[sub] = got
    except TaskError as exc:
        raise CliError(str(exc)) from None
    res = mme_scores(subtasks)

    def table(o):
        for sub, m in o["subtasks"].items():
            print(f"{sub:<24} acc {m['acc']:7.2f}  acc+ {m['acc_plus']:7.2f}  score {m['score']:7.2f}")
        print(f"perception {o['perception']:.4f}  cognition {o['cognition']:.4f}  hallucination "
              f"{o['hallucination']:.4f}")

    return _emit(res, args.json, table)


def _chair(args) -> int:
    from hallufix.scoring.chair import ChairScorer, coco_double_words, coco_synonyms_path, read_synonyms

    if not args.gt_objects:
        raise CliError("give --gt-objects (a prebuilt {image_id: [objects]} table); building it from COCO "
                       "annotation files is not supported yet")
    p = Path(args.gt_objects)
    if not p.is_file():
        raise CliError(f"file not found: {p}")
    raw = json.loads(gzip.open(p, "rt").read() if p.suffix == ".gz" else p.read_text())
    gt = {str(k): set(v) for k, v in raw.items()}
    syn = Path(args.synonyms) if args.synonyms else coco_synonyms_path()
    try:
        scorer = ChairScorer(read_synonyms(syn), coco_double_words(), normaliser=args.normaliser)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    caps = [(str(c["image_id"]), c["caption"]) for c in _jsonl(args.captions)]
    res = scorer.score(caps, gt)
    out = {k: res[k] for k in ("chair_s", "chair_i", "recall", "length", "n")}
    return _emit(out, args.json, lambda o: print("  ".join(f"{k} {v:.2f}" for k, v in o.items())))
