"""``hallufix score amber`` and ``hallufix score hallusionbench`` (``repope`` and ``mmhal`` live beside it)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hallufix.cli import CliError

EVAL_TYPES = {"a": ("g", "de", "da", "dr"), "g": ("g",), "d": ("de", "da", "dr"), "de": ("de",), "da": ("da",),
              "dr": ("dr",)}
BLOCKS = {"de": ("existence",), "da": ("attribute", "state", "number", "action"), "dr": ("relation",)}


def register(ssub) -> None:
    am = ssub.add_parser(
        "amber", help="AMBER: discriminative Acc/P/R/F1 (No = positive), generative CHAIR/Cover/Hal/Cog, AMBER score",
        epilog="example: hallufix score amber --responses responses.json --data AMBER/data --evaluation-type a",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = am.add_mutually_exclusive_group(required=True)
    src.add_argument("--responses", metavar="FILE",
                     help="the official inference file: a JSON list of {\"id\", \"response\"}")
    src.add_argument("--run", metavar="DIR", help="a hallufix run directory of an amber task (its parsed responses)")
    am.add_argument("--write", metavar="FILE", help="also write the responses as the official inference file")
    am.add_argument("--data", required=True, metavar="DIR",
                    help="AMBER's data/ folder (annotations.json, relation.json, safe_words.txt)")
    am.add_argument("--evaluation-type", default="a", choices=sorted(EVAL_TYPES),
                    help="as inference.py: a all, g generative, d discriminative, de/da/dr one dimension (default a)")
    am.add_argument("--similarity", default="auto", choices=("auto", "off"),
                    help="spaCy en_core_web_lg similarity step: auto (used when installed), off (default auto)")
    am.add_argument("--json", action="store_true", help="print one JSON object")
    am.set_defaults(handler=_amber)

    hb = ssub.add_parser(
        "hallusionbench", help="HallusionBench: aAcc, qAcc, fAcc, easy/hard pair accuracy (official) or "
                               "VLMEvalKit's yes/no convention",
        epilog="examples: hallufix score hallusionbench --results judged.json --correctness-field "
               "gpt4v_output_gpt_check\n          hallufix score hallusionbench --results "
               "HallusionBench_result_sample.json --questions HallusionBench.json   (yes/no path)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    hsrc = hb.add_mutually_exclusive_group(required=True)
    hsrc.add_argument("--results", metavar="FILE",
                      help="JSON list in the official result layout (category, subcategory, visual_input, set_id, "
                           "figure_id, question_id, ...)")
    hsrc.add_argument("--run", metavar="DIR", help="a hallufix run directory of the hallusionbench task")
    hb.add_argument("--write", metavar="FILE",
                    help="with --run: write its answers in the official result layout (model_prediction) here")
    hb.add_argument("--correctness-field", default=None, metavar="NAME",
                    help="per-row label 0 wrong / 1 correct / 2 uncertain (a judge's, e.g. "
                         "gpt4v_output_gpt_check, or a human label); gives the official metrics")
    hb.add_argument("--prediction-field", default="model_prediction", metavar="NAME",
                    help="the answer text for the yes/no path (default model_prediction)")
    hb.add_argument("--questions", default=None, metavar="FILE",
                    help="HallusionBench.json, for gt_answer when the results rows lack it (yes/no path)")
    hb.add_argument("--json", action="store_true", help="print one JSON object")
    hb.set_defaults(handler=_hallusionbench)


def _json_list(path: str, what: str) -> list:
    from hallufix.tasks.base import read_json

    p = Path(path)
    data = read_json(p, what)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise CliError(f"{p}: expected a JSON list of objects ({what})")
    return data


def amber_result(responses: str, data: str, evaluation_type: str = "a", similarity: str = "auto") -> dict:
    """``{block: metrics}`` for the blocks ``evaluation_type`` prints, ``generative`` (with ``similarity`` and
    ``sources``) and ``amber_score`` when both the overall F1 and CHAIR are there."""
    from hallufix.scoring.amber import amber_score, discriminative, load_annotations
    from hallufix.scoring.amber_generative import GenerativeScorer

    d = Path(data)
    if not (d / "annotations.json").is_file():
        raise CliError(f"{d} has no annotations.json (give AMBER's data/ folder)")
    try:
        anns = load_annotations(d / "annotations.json")
    except (ValueError, json.JSONDecodeError) as exc:
        raise CliError(str(exc)) from None
    rows = _json_list(responses, '[{"id": 1, "response": "..."}]')
    want = EVAL_TYPES[evaluation_type]
    disc, gen = [], []
    for i, r in enumerate(rows, 1):
        if "id" not in r or "response" not in r:
            raise CliError(f"{responses}: item {i} lacks 'id' or 'response'")
        if not isinstance(r["id"], int) or not 1 <= r["id"] <= len(anns):
            raise CliError(f"{responses}: item {i}: id {r['id']!r} is not an AMBER id (1..{len(anns)})")
        ann = anns[r["id"] - 1]
        if ann["type"] == "generative":
            gen.append((ann, r["response"]))
        else:
            disc.append((ann["type"], ann["truth"], r["response"]))
    blocks = discriminative(disc) if disc else {}
    out: dict = {}
    if set(("de", "da", "dr")) <= set(want) and "overall" in blocks:
        out["overall"] = blocks["overall"]
    for dim in ("de", "da", "dr"):
        if dim in want:
            out.update({b: blocks[b] for b in BLOCKS[dim] if b in blocks})
    if "g" in want and gen:
        try:
            scorer = GenerativeScorer.from_folder(d, **({"similarity": None} if similarity == "off" else {}))
        except OSError as exc:
            raise CliError(f"generative scoring needs relation.json and safe_words.txt in {d} ({exc})") from None
        out["generative"] = scorer.score(gen)
    if "overall" in out and "generative" in out:
        out["amber_score"] = amber_score(out["generative"]["chair"], out["overall"]["f1"])
    if not out:
        raise CliError(f"{responses}: no responses of the kind --evaluation-type {evaluation_type} scores")
    return out


def _amber_run_responses(run: str, write: str | None) -> str:
    """The official inference file (``[{"id", "response"}]``, by id) from a run's ``samples.jsonl``; returns its path
    (``write``, or a file beside the run's samples)."""
    rows = sorted(({"id": int(r["meta"]["amber_id"]), "response": r["parsed"]} for r in _run_records(run)
                   if "amber_id" in (r.get("meta") or {})), key=lambda r: r["id"])
    return _write_rows(rows, run, write, "amber_responses.json", "AMBER samples (a run of amber, amber-disc or "
                       "amber-gen?)", indent=1)


def _run_records(run: str) -> list[dict]:
    """The records of a run's ``samples.jsonl`` (a :class:`CliError` naming what is wrong otherwise)."""
    from hallufix.report import ReportError, read_samples

    try:
        return list(read_samples(run).values())
    except ReportError as exc:
        raise CliError(str(exc)) from None


def _write_rows(rows: list[dict], run: str, write: str | None, default: str, what: str, indent: int) -> str:
    """Write an official-layout file of ``rows`` to ``write`` (or ``default`` in the run directory); its path."""
    if not rows:
        raise CliError(f"{run}: no {what} in samples.jsonl")
    path = Path(write) if write else Path(run) / default
    path.write_text(json.dumps(rows, indent=indent), encoding="utf-8")
    return str(path)


def _amber(args) -> int:
    from hallufix.cli.score import _emit

    responses = args.responses
    if args.run:
        responses = _amber_run_responses(args.run, args.write)
    elif args.write:
        Path(args.write).write_text(Path(responses).read_text(encoding="utf-8"), encoding="utf-8")
    out = amber_result(responses, args.data, args.evaluation_type, args.similarity)

    def table(o):
        for name, m in o.items():
            if name == "generative":
                print(f"generative   CHAIR {m['chair']:.1f}  Cover {m['cover']:.1f}  Hal {m['hal']:.1f}  "
                      f"Cog {m['cog']:.1f}  (n {m['n']})")
                print(f"note: similarity step: {m['similarity']}")
            elif name == "amber_score":
                print(f"AMBER score (100 - CHAIR + F1) / 2 = {m:.2f}")
            else:
                print(f"{name:<12} Acc {m['accuracy']:.1f}  P {m['precision']:.1f}  R {m['recall']:.1f}  "
                      f"F1 {m['f1']:.1f}  (n {m['n']})")

    return _emit(out, args.json, table)


def hallusionbench_result(results: str, correctness_field: str | None = None,
                          prediction_field: str = "model_prediction", questions: str | None = None) -> dict:
    """Official metrics from ``correctness_field``, else VLMEvalKit's yes/no convention on ``prediction_field``;
    ``method`` says which."""
    from hallufix.scoring.hallusionbench import (HallusionBenchError, check_rows, official_metrics, question_key,
                                                 vlmevalkit_metrics)

    rows = _json_list(results, "the official HallusionBench result layout")
    try:
        check_rows(rows)
        if correctness_field:
            missing = [i for i, r in enumerate(rows, 1) if correctness_field not in r]
            if missing:
                raise CliError(f"{results}: {len(missing)} rows lack '{correctness_field}' (first rows {missing[:5]})")
            bad = sorted({str(r[correctness_field]) for r in rows} - {"0", "1", "2"})
            if bad:
                raise CliError(f"{results}: '{correctness_field}' must be 0, 1 or 2, found {bad[:5]}")
            out = official_metrics(rows, [r[correctness_field] for r in rows])
            out["method"] = f"official (correctness from '{correctness_field}')"
            return out
        if questions:
            gt = {question_key(q): q.get("gt_answer") for q in _json_list(questions, "HallusionBench.json")}
            for i, r in enumerate(rows, 1):
                if "gt_answer" not in r:
                    if question_key(r) not in gt:
                        raise CliError(f"{results}: row {i} ({question_key(r)}) is not in {questions}")
                    r["gt_answer"] = gt[question_key(r)]
        lacking = [i for i, r in enumerate(rows, 1) if "gt_answer" not in r]
        if lacking:
            raise CliError(f"{results}: {len(lacking)} rows lack gt_answer; pass --questions HallusionBench.json, "
                           f"or --correctness-field NAME for judged results")
        missing = [i for i, r in enumerate(rows, 1) if prediction_field not in r]
        if missing:
            raise CliError(f"{results}: {len(missing)} rows lack '{prediction_field}' (first rows {missing[:5]}); "
                           f"pass --prediction-field or --correctness-field")
        out = vlmevalkit_metrics(rows, [str(r[prediction_field]) for r in rows])
    except HallusionBenchError as exc:
        raise CliError(f"{results}: {exc}") from None
    out["method"] = ("VLMEvalKit yes/no convention (not the official judge-based rule; Unknown counts wrong; "
                     "l2-category = category_subcategory)")
    return out


def _hallusionbench_run_results(run: str, write: str | None) -> str:
    """The official result layout (one row per question, ``model_prediction`` = the generated text) from a run's
    ``samples.jsonl``; returns its path (``write``, or a file in the run directory)."""
    rows = [{**r["meta"], "model_prediction": r.get("output", "")} for r in _run_records(run)
            if "visual_input" in (r.get("meta") or {})]
    return _write_rows(rows, run, write, "hallusionbench_results.json",
                       "HallusionBench samples (a run of the hallusionbench task?)", indent=4)


def _hallusionbench(args) -> int:
    from hallufix.cli.score import _emit

    results = args.results
    if args.run:
        results = _hallusionbench_run_results(args.run, args.write)
    out = hallusionbench_result(results, args.correctness_field, args.prediction_field, args.questions)

    def table(o):
        print(f"method: {o['method']}")
        for k in ("aAcc", "qAcc", "fAcc", "easy_acc", "hard_acc", "overall"):
            if k in o:
                print(f"{k:<10} {o[k]:.4f}")
        print(f"questions {o['n']}")

    return _emit(out, args.json, table)
