"""MME scoring as the official ``eval_tool/calculation.py`` does it.

Parse: lower-case; exactly ``yes``/``no`` is taken as is; otherwise ``yes`` in the first 4 characters -> yes, else
``no`` in them -> no, else ``other`` (always wrong). Per subtask: acc = correct / questions, acc+ = images with both
questions right (consecutive lines are an image's pair), score = 100·acc + 100·acc+. Perception = sum of the 10
perception subtasks, cognition = sum of the 4 cognition subtasks; the hallucination subset is existence + count +
position + color (object level = existence + count, attribute level = position + color). A total is reported only
over its complete set of subtasks; otherwise it is ``None`` with the missing subtasks named.
"""
from __future__ import annotations

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
HALLUCINATION = ("existence", "count", "position", "color")


def parse_mme(response: str) -> str:
    """``yes``, ``no`` or ``other``."""
    r = response.lower()
    if r in ("yes", "no"):
        return r
    head = r[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def parse_mme_lmms_eval(response: str) -> str:
    """lmms-eval's ``parse_pred_ans``: lower-cased, stripped, periods removed; ``yes``/``no``; a single ``y``/``n``;
    else the official four-character prefix test; else ``other``."""
    r = response.lower().strip().replace(".", "")
    if r in ("yes", "no"):
        return r
    if len(r) == 1:
        return {"y": "yes", "n": "no"}.get(r, "other")
    return parse_mme(r)


#: MME response parsers by name: ``official`` (``calculation.py``, the default) and ``lmms-eval``.
PARSERS = {"official": parse_mme, "lmms-eval": parse_mme_lmms_eval}


def subtask_score(rows: list[tuple[str, str, str]], parser: str = "official") -> dict:
    """``rows`` of ``(image, gt, response)`` in file order (an image's two questions adjacent) -> acc, acc+ (both
    in percent) and score; ``parser`` a key of :data:`PARSERS`."""
    if not rows:
        raise ValueError("empty MME subtask")
    parse = PARSERS[parser]
    correct = [parse(resp) == gt.lower() for _, gt, resp in rows]
    acc = 100 * sum(correct) / len(correct)
    pairs = [(correct[i], correct[i + 1]) for i in range(0, len(correct) - 1, 2)]
    images = [rows[i][0] for i in range(0, len(rows) - 1, 2)]
    if any(rows[i][0] != rows[i + 1][0] for i in range(0, len(rows) - 1, 2)) or len(rows) % 2:
        raise ValueError("MME rows must come in consecutive pairs per image (the official tool pairs lines)")
    acc_plus = 100 * sum(a and b for a, b in pairs) / len(images)
    return {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "n": len(rows)}


#: the totals and the subtasks each sums
TOTALS = {"perception": PERCEPTION, "cognition": COGNITION, "hallucination": HALLUCINATION,
          "object_level": ("existence", "count"), "attribute_level": ("position", "color")}


def mme_scores(subtasks: dict[str, list[tuple[str, str, str]]], parser: str = "official",
               allow_partial: bool = False, expected: dict[str, int] | None = None) -> dict:
    """``{subtask: rows}`` -> ``{"perception", "cognition", "hallucination", "object_level", "attribute_level",
    "subtasks": {name: {acc, acc_plus, score, n}}, "incomplete": {total: {"missing": [...], "partial_sum"}}}``.

    A total is the sum over its complete set of subtasks (:data:`TOTALS`); when one of them is absent the total is
    ``None`` and ``incomplete`` names the missing subtasks and the sum over those present (never a silently smaller
    number). ``allow_partial=True`` reports that partial sum as the total instead (still listed in ``incomplete``).
    ``expected``: questions per subtask in the full set (a ``--limit`` cut): a subtask with fewer counts as missing
    from the totals (``"count (10 of 80 questions)"``), though its own acc / acc+ / score are still given.
    """
    if parser not in PARSERS:
        raise ValueError(f"unknown MME parser '{parser}'; known: {', '.join(PARSERS)}")
    per = {name: subtask_score(rows, parser) for name, rows in subtasks.items()}
    out: dict = {}
    incomplete: dict = {}
    for total, names in TOTALS.items():
        present = sum(per[n]["score"] for n in names if n in per)
        missing = [n if n not in per else f"{n} ({per[n]['n']} of {expected[n]} questions)" for n in names
                   if n not in per or (expected and per[n]["n"] < expected.get(n, 0))]
        if missing:
            incomplete[total] = {"missing": missing, "partial_sum": present}
        out[total] = present if not missing or allow_partial else None
    out["subtasks"] = per
    out["incomplete"] = incomplete
    return out


def partial_note(incomplete: dict, total: str) -> str:
    """``"partial: missing OCR (sum over the 9 present: 856.11)"`` for a total of :func:`mme_scores`."""
    info = incomplete[total]
    n_present = len(TOTALS[total]) - len(info["missing"])
    return (f"partial: missing {', '.join(info['missing'])} (sum over the {n_present} present: "
            f"{info['partial_sum']:.2f})")


def total_metrics(res: dict, names=("perception", "cognition", "hallucination", "object_level",
                                    "attribute_level")) -> dict:
    """The ``"all"`` entry of a task's scores from :func:`mme_scores`: a complete total as a number, an incomplete
    one as ``{"value": None, "partial": note}`` (see :func:`hallufix.runs.metrics_block`)."""
    return {k: {"value": None, "partial": partial_note(res["incomplete"], k)} if res[k] is None else res[k]
            for k in names}
