"""``hallufix score mmhal``: the official MMHal-Bench response file from a run, and judging with the user's judge."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hallufix.cli import CliError


def register(ssub) -> None:
    mm = ssub.add_parser(
        "mmhal", help="MMHal-Bench: write the official response file; judge it with your judge (none bundled)",
        epilog="examples: hallufix score mmhal --run runs/x/baseline --template response_template.json "
               "--write response_mymodel.json\n          hallufix score mmhal --responses response_mymodel.json "
               "--judge 'python my_gpt4_judge.py' --judge-name gpt-4-0314 --prompt-template prompt.txt --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = mm.add_mutually_exclusive_group(required=True)
    src.add_argument("--responses", metavar="FILE", help="an official response file (template + model_answer)")
    src.add_argument("--run", metavar="DIR", help="a hallufix run directory of the mmhal task")
    mm.add_argument("--template", metavar="FILE", help="response_template.json (with --run)")
    mm.add_argument("--write", metavar="FILE", help="write the official response file here")
    mm.add_argument("--judge", metavar="CMD_OR_MODULE:FUNC",
                    help="a command reading the prompt on stdin and printing the reply, or module:function")
    mm.add_argument("--judge-name", metavar="NAME", help="the judge's identity, recorded (e.g. gpt-4-0314)")
    mm.add_argument("--prompt-template", metavar="FILE",
                    help="the judge prompt with four {} slots (image contents, question, human answer, model answer)")
    mm.add_argument("--evaluation", metavar="FILE", help="write every reply and rating, with the judge record")
    mm.add_argument("--json", action="store_true", help="print one JSON object")
    mm.set_defaults(handler=_mmhal)


def _responses_from_run(run: str, template: str | None) -> list[dict]:
    from hallufix.report import ReportError, read_samples
    from hallufix.tasks.base import TaskError
    from hallufix.tasks.mmhal import read_template, response_file

    if not template:
        raise CliError("--run needs --template response_template.json")
    try:
        rows = read_template(template)
        answers = {int(r["meta"]["index"]): r["parsed"] for r in read_samples(run).values()
                   if "index" in (r.get("meta") or {})}
        return response_file(rows, answers)
    except (TaskError, ReportError) as exc:
        raise CliError(str(exc)) from None


def mmhal_result(responses: list[dict], judge=None, judge_name=None, prompt_template=None) -> tuple[dict, list]:
    """``(summary with the judge record, per-row evaluations)``; ``({n}, [])`` without a judge."""
    from hallufix.scoring.mmhal import JudgeError, judge_record, judge_rows, make_judge, summarise

    if judge is None:
        return {"n": len(responses), "judged": False}, []
    if not prompt_template or not Path(prompt_template).is_file():
        raise CliError("a judge needs --prompt-template FILE (four {} slots: image contents, question, human answer, "
                       "model answer)")
    missing = [i for i, r in enumerate(responses) if "model_answer" not in r or "question" not in r]
    if missing:
        raise CliError(f"response rows {missing[:5]} lack model_answer or question")
    text = Path(prompt_template).read_text(encoding="utf-8")
    try:
        func, how = make_judge(judge)
        judged = judge_rows(responses, func, text)
    except JudgeError as exc:
        raise CliError(str(exc)) from None
    out = summarise(responses, judged)
    out["judge"] = judge_record(judge_name, how, text)
    return out, [{**r, **j} for r, j in zip(responses, judged)]


def _mmhal(args) -> int:
    from hallufix.cli.score import _emit

    if args.run:
        responses = _responses_from_run(args.run, args.template)
    else:
        from hallufix.tasks.base import read_json

        responses = read_json(args.responses, "MMHal-Bench response file")
    if args.write:
        Path(args.write).write_text(json.dumps(responses, indent=2), encoding="utf-8")
    out, evaluations = mmhal_result(responses, args.judge, args.judge_name, args.prompt_template)
    if args.evaluation and evaluations:
        Path(args.evaluation).write_text(json.dumps({"judge": out["judge"], "rows": evaluations}, indent=2),
                                         encoding="utf-8")

    def table(o):
        if not o.get("judged", True):
            print(f"{o['n']} responses" + (f" written to {args.write}" if args.write else "")
                  + "; no judge given (--judge), so nothing is scored")
            return
        print(f"average score {o['average_score']:.2f}  hallucination rate {o['hallucination_rate']:.2f}  "
              f"(n {o['n']}, unreadable ratings {o['unreadable']})")
        print("per type: " + ", ".join(f"{t} {v:.2f}" for t, v in o["per_type"].items()))
        print(f"judge: {o['judge']['name']} ({o['judge']['called_as']}), prompt sha256 {o['judge']['prompt_sha256']}")

    return _emit(out, args.json, table)
