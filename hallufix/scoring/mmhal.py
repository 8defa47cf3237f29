"""MMHal-Bench judging with a judge the user supplies (none is bundled), as LLaVA-RLHF's ``eval_gpt4.py`` scores.

The official script formats a prompt template with four ``{}`` slots — the image contents (``image_content``
joined with ", "), the question, the human answer (``gt_answer``) and the model's answer (``model_answer``) —
asks GPT-4 once per question, and reads the rating: for each s in 0..6 whether ``"rating: s"`` occurs in the
lower-cased reply; exactly one hit is the score, anything else scores 0 (with a warning). A score below 3 is a
hallucination. Reported: average score (0-6), hallucination rate (fraction), and the average score per question
type (the official script takes question ``i % 8`` as the type, relying on the file's order; hallufix groups by the
``question_type`` field and reports ``order_types_match`` — whether that grouping equals the ``i % 8`` one).

The template is the user's file (the official one is in LLaVA-RLHF, GPL-3.0; hallufix ships no copy); its text and
SHA-256, the judge's name and how it was called are recorded beside every rating. No torch.
"""
from __future__ import annotations

import hashlib
import importlib
import shlex
import subprocess
from typing import Callable


class JudgeError(ValueError):
    """A judge that cannot be called, or a template without the four slots."""


def rating_of(reply: str) -> int | None:
    """The official rating read: the single s in 0..6 with ``"rating: s"`` in the lower-cased reply, else None."""
    found = [s for s in range(7) if f"rating: {s}" in reply.lower()]
    return found[0] if len(found) == 1 else None


def check_template(template: str) -> None:
    if template.count("{}") != 4:
        raise JudgeError(f"the judge prompt template needs exactly four '{{}}' slots (image contents, question, "
                         f"human answer, model answer); it has {template.count('{}')}")


def prompt_for(template: str, row: dict) -> str:
    """The official prompt for one response-file row."""
    contents = row.get("image_content") or []
    return template.format(", ".join(contents) if isinstance(contents, list) else str(contents), row["question"],
                           row["gt_answer"], row["model_answer"])


def make_judge(spec) -> tuple[Callable[[str], str], str]:
    """``(prompt -> reply, how)`` from a Python callable, ``module:function``, or a shell command that reads the
    prompt on stdin and prints the reply (non-zero exit: :class:`JudgeError` with its stderr)."""
    if callable(spec):
        return spec, f"python callable {getattr(spec, '__qualname__', repr(spec))}"
    spec = str(spec)
    mod, _, fn = spec.partition(":")
    if fn and " " not in spec and mod.replace(".", "").replace("_", "").isalnum():
        try:
            func = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as exc:
            raise JudgeError(f"judge '{spec}': cannot import {fn} from {mod} ({exc})") from None
        return func, f"python {spec}"
    argv = shlex.split(spec)
    if not argv:
        raise JudgeError("empty judge command")

    def run(prompt: str) -> str:
        try:
            proc = subprocess.run(argv, input=prompt, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise JudgeError(f"judge command {spec!r} failed to start: {exc}") from None
        if proc.returncode != 0:
            raise JudgeError(f"judge command {spec!r} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        return proc.stdout

    return run, f"command {spec}"


def judge_rows(rows: list[dict], judge: Callable[[str], str], template: str) -> list[dict]:
    """Per row ``{rating (None when unreadable), score (0 when unreadable), reply}``."""
    check_template(template)
    out = []
    for row in rows:
        reply = judge(prompt_for(template, row))
        r = rating_of(reply)
        out.append({"rating": r, "score": 0 if r is None else r, "reply": reply})
    return out


def summarise(rows: list[dict], judged: list[dict]) -> dict:
    """``{average_score, hallucination_rate, per_type, unreadable, n, order_types_match}``."""
    scores = [j["score"] for j in judged]
    per: dict[str, list[int]] = {}
    for row, s in zip(rows, scores):
        per.setdefault(str(row.get("question_type", "all")), []).append(s)
    by_order = [[s for i, s in enumerate(scores) if i % 8 == t] for t in range(8)]
    match = len(rows) == 96 and sorted(map(sorted, per.values())) == sorted(map(sorted, by_order))
    n = len(scores)
    return {"average_score": sum(scores) / n if n else 0.0,
            "hallucination_rate": sum(s < 3 for s in scores) / n if n else 0.0,
            "per_type": {t: sum(v) / len(v) for t, v in per.items()},
            "unreadable": sum(j["rating"] is None for j in judged), "n": n, "order_types_match": match}


def judge_record(name: str | None, how: str, template: str) -> dict:
    """What the results say about the judge: its name, how it was called, the prompt template and its hash."""
    return {"name": name or "unnamed (pass a judge name)", "called_as": how, "prompt_template": template,
            "prompt_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest()}
