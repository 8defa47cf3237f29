"""HallusionBench scoring: the official rule (tianyi-lab/HallusionBench ``evaluation.py`` / ``utils.py``) and, named
as such, VLMEvalKit's judge-free yes/no convention (``docs/benchmarks.md``, HallusionBench).

Official (:func:`official_metrics`): each row carries a correctness label — ``0`` wrong, ``1`` correct, ``2``
uncertain — from a judge (the official key is ``gpt4v_output_gpt_check``) or a human label field. A row is correct
iff its label is 1, or it is a VS question with ``figure_id`` 0 (no image) and the label is 2. Keys (all fields as
strings): question = category_subcategory_setid_figureid_questionid, which must be unique; pair =
category_subcategory_setid_questionid; figure = category_subcategory_setid_figureid.

* ``aAcc`` (question accuracy): correct questions / questions;
* ``qAcc`` (question-pair accuracy): pairs whose questions are all correct / pairs;
* ``fAcc`` (figure accuracy): figures whose questions are all correct / figures, VS figure-0 rows excluded;
* ``easy_acc`` / ``hard_acc``: the pair accuracy on rows with ``visual_input != "2"`` / ``== "2"``.

Every value is ``round(100 * x, 4)``.

VLMEvalKit (:func:`vlmevalkit_metrics`): the prediction is reduced to Yes / No / Unknown by
:func:`yes_no_extraction` and scored against ``gt_answer`` (``"1"`` = Yes); Unknown is wrong (no LLM fallback
here), and there is no uncertain rule. Groups: figure = l2-category_setid_figureid *without* the VS figure-0
exclusion, pair = l2-category_setid_questionid; with the official JSON's fields hallufix takes
category_subcategory as the l2-category (VLMEvalKit's TSV is not the official layout). ``overall`` =
mean(aAcc, fAcc, qAcc), VLMEvalKit's and the 2025 leaderboard's headline. No torch.
"""
from __future__ import annotations

import re
from collections import Counter

PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
LONE_PERIOD = re.compile(r"\.(?!\d)")
FIELDS = ("category", "subcategory", "set_id", "figure_id", "question_id", "visual_input")


class HallusionBenchError(ValueError):
    """A results file HallusionBench's rules cannot score (names the rows or keys at fault)."""


def _key(row: dict, *fields: str) -> str:
    return "_".join(str(row[f]) for f in fields)


def question_key(row: dict) -> str:
    return _key(row, "category", "subcategory", "set_id", "figure_id", "question_id")


def check_rows(rows: list[dict]) -> None:
    """Every row has the official fields and a unique question key (the official ``get_eval_all`` asserts it)."""
    for i, r in enumerate(rows, 1):
        missing = [f for f in FIELDS if f not in r]
        if missing:
            raise HallusionBenchError(f"row {i} lacks {missing} (the official result layout has {', '.join(FIELDS)})")
    dup = sorted(k for k, n in Counter(question_key(r) for r in rows).items() if n > 1)
    if dup:
        raise HallusionBenchError(f"{len(dup)} duplicate question keys (category_subcategory_setid_figureid_"
                                  f"questionid): {', '.join(dup[:10])}{' ...' if len(dup) > 10 else ''}")


def _is_vs_no_image(row: dict) -> bool:
    return str(row["category"]) == "VS" and str(row["figure_id"]) == "0"


def official_correct(row: dict, label) -> bool:
    """Label 1, or label 2 on a VS question without an image (``assign_correctness``)."""
    label = str(label).strip()
    return label == "1" or (label == "2" and _is_vs_no_image(row))


def _group_acc(rows, correct, key) -> float:
    groups: dict[str, bool] = {}
    for r, c in zip(rows, correct):
        k = key(r)
        groups[k] = groups.get(k, True) and c
    return round(100 * sum(groups.values()) / len(groups), 4) if groups else 0.0


def _pair_key(r):
    return _key(r, "category", "subcategory", "set_id", "question_id")


def official_metrics(rows: list[dict], labels: list) -> dict:
    """``{aAcc, qAcc, fAcc, easy_acc, hard_acc, n, pairs, figures, easy_n, hard_n}`` by the official rule."""
    check_rows(rows)
    correct = [official_correct(r, l) for r, l in zip(rows, labels)]
    easy = [(r, c) for r, c in zip(rows, correct) if str(r["visual_input"]) != "2"]
    hard = [(r, c) for r, c in zip(rows, correct) if str(r["visual_input"]) == "2"]
    fig_rows = [(r, c) for r, c in zip(rows, correct) if not _is_vs_no_image(r)]
    fig_key = lambda r: _key(r, "category", "subcategory", "set_id", "figure_id")  # noqa: E731
    return {"aAcc": round(100 * sum(correct) / len(rows), 4) if rows else 0.0,
            "qAcc": _group_acc(rows, correct, _pair_key),
            "fAcc": _group_acc([r for r, _ in fig_rows], [c for _, c in fig_rows], fig_key),
            "easy_acc": _group_acc([r for r, _ in easy], [c for _, c in easy], _pair_key),
            "hard_acc": _group_acc([r for r, _ in hard], [c for _, c in hard], _pair_key),
            "n": len(rows), "pairs": len({_pair_key(r) for r in rows}),
            "figures": len({fig_key(r) for r, _ in fig_rows}), "easy_n": len(easy), "hard_n": len(hard)}


def process_punctuation(text: str) -> str:
    """The VQA-style punctuation rule VLMEvalKit applies before looking for yes/no.

    Each listed character is deleted when it touches a space anywhere in the text (or the text has a
    digit,digit comma), else replaced by a space; then at most 32 periods not followed by a digit are deleted
    (the original passes ``re.UNICODE`` = 32 as the substitution count)."""
    out = text
    delete = DIGIT_COMMA.search(text) is not None
    for p in PUNCT:
        out = out.replace(p, "" if delete or p + " " in text or " " + p in text else " ")
    return LONE_PERIOD.sub("", out, count=32)


def yes_no_extraction(prediction: str) -> str:
    """``Yes`` if the word ``yes`` occurs and ``no`` does not, ``No`` the other way round, else ``Unknown``."""
    words = process_punctuation(prediction.lower()).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "no" in words and "yes" not in words:
        return "No"
    return "Unknown"


def vlmevalkit_metrics(rows: list[dict], predictions: list[str]) -> dict:
    """``{aAcc, fAcc, qAcc, overall, n, unknown}`` by VLMEvalKit's convention (see the module docstring)."""
    check_rows(rows)
    extracted = [yes_no_extraction(p) for p in predictions]
    correct = [e == ("Yes" if str(r["gt_answer"]).strip() == "1" else "No") for r, e in zip(rows, extracted)]
    a = round(100 * sum(correct) / len(rows), 4) if rows else 0.0
    f = _group_acc(rows, correct, lambda r: _key(r, "category", "subcategory", "set_id", "figure_id"))
    q = _group_acc(rows, correct, _pair_key)
    return {"aAcc": a, "fAcc": f, "qAcc": q, "overall": round((a + f + q) / 3, 4), "n": len(rows),
            "unknown": extracted.count("Unknown")}
