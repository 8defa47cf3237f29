"""AMBER scoring as junyangwang0410/AMBER's ``inference.py`` does it (``docs/benchmarks.md``, AMBER).

Discriminative (:func:`discriminative`): the response is compared **exactly** with ``Yes`` / ``No`` (truth is
lower-case ``yes``/``no``); the positive class is **No** (a detected hallucination). Every counter's denominator
starts at 0.001 (``data/metrics.txt``), so each ratio is count / (N + 0.001) and the pooled Attribute block's is
count / (N + 0.003) (three counters summed). Accuracy, precision and recall are ``round(100 * ratio, 1)``; F1 is
computed from the *rounded* P and R: ``round(2PR / (P + R + eps) * 100, 1)`` (P, R as fractions) with
``eps = 0.001`` for Existence and ``0.0001`` elsewhere.

Generative (:class:`GenerativeScorer`): nouns of the raw response (``nltk.word_tokenize`` + ``pos_tag`` tags
``NN*``, lemmatised with WordNet's default noun POS) kept when in the hallucination vocabulary (``relation.json``
keys and values); per noun: a safe word (``safe_words.txt``) is skipped but counted; an exact match among the image's
truth objects and their association words covers that truth object; otherwise an exact match among the hallu
objects/associations sets Cog's flag, then spaCy ``en_core_web_lg`` similarity ``> 0.8`` to a hallu entry sets it,
to a truth entry covers it and saves the noun; else the noun is hallucinated. CHAIR, Cover, Hal, Cog are
``round(100 * ratio, 1)`` with the 0.001 denominators. Without spaCy's vectors the similarity steps are skipped
(exact match only; every noun without an exact truth match counts as hallucinated) and the result says so.

AMBER score = (100 - CHAIR + F1) / 2 (the README table's; the script does not compute it). No torch.
"""
from __future__ import annotations

import json
from pathlib import Path

#: annotation type -> (dimension, sub-block)
TYPES = {"discriminative-attribute-state": ("attribute", "state"),
         "discriminative-attribute-number": ("attribute", "number"),
         "discriminative-attribute-action": ("attribute", "action"),
         "discriminative-hallucination": ("existence", None)}
INIT = 0.001  # metrics.txt: every denominator starts here
DIMENSIONS = ("existence", "attribute", "relation")


def dimension_of(ann_type: str) -> tuple[str, str | None]:
    """``(existence|attribute|relation, state|number|action|None)``; any unlisted type is Relation, as in the code."""
    return TYPES.get(ann_type, ("relation", None))


def _block(counts: list[dict], eps: float) -> dict:
    num = lambda key: sum(c[key] for c in counts)  # noqa: E731
    den = lambda key: sum(c[key] + INIT for c in counts)  # noqa: E731
    acc = round(num("correct") / den("n") * 100, 1)
    p = round(num("ans_no_truth_no") / den("ans_no") * 100, 1)
    r = round(num("truth_no_ans_no") / den("truth_no") * 100, 1)
    f1 = round(2 * (p / 100) * (r / 100) / ((p / 100) + (r / 100) + eps) * 100, 1)
    return {"accuracy": acc, "precision": p, "recall": r, "f1": f1, "n": num("n")}


def discriminative(rows) -> dict[str, dict]:
    """``rows`` of ``(annotation type, truth "yes"/"no", response)`` -> ``{block: {accuracy, precision, recall, f1,
    n}}`` for the blocks present: ``existence``, ``attribute`` (pooled), ``state``, ``number``, ``action``,
    ``relation``, and ``overall`` only when all three dimensions are present (the script prints it only then)."""
    counters: dict[str, dict] = {}
    for ann_type, truth, response in rows:
        dim, sub = dimension_of(ann_type)
        c = counters.setdefault(sub or dim, dict.fromkeys(("n", "correct", "truth_no", "truth_no_ans_no", "ans_no",
                                                           "ans_no_truth_no"), 0))
        c["n"] += 1
        if truth == "yes":
            c["correct"] += response == "Yes"
        else:
            c["truth_no"] += 1
            c["correct"] += response == "No"
            c["truth_no_ans_no"] += response == "No"
        if response == "No":
            c["ans_no"] += 1
            c["ans_no_truth_no"] += truth == "no"
    out = {}
    if "existence" in counters:
        out["existence"] = _block([counters["existence"]], 0.001)
    attr = [counters[s] for s in ("state", "number", "action") if s in counters]
    if attr:
        empty = dict.fromkeys(counters[next(iter(counters))], 0)
        # the pooled block always sums the three counters, so its denominators are N + 0.003
        out["attribute"] = _block([counters.get(s, empty) for s in ("state", "number", "action")], 0.0001)
        for s in ("state", "number", "action"):
            if s in counters:
                out[s] = _block([counters[s]], 0.0001)
    if "relation" in counters:
        out["relation"] = _block([counters["relation"]], 0.0001)
    if "existence" in counters and attr and "relation" in counters:
        total = {k: sum(c[k] for c in counters.values()) for k in counters["existence"]}
        out["overall"] = _block([total], 0.0001)
    return out


def amber_score(chair: float, f1: float) -> float:
    """(100 - CHAIR + F1) / 2, unrounded (CHAIR and F1 as the script prints them)."""
    return (100 - chair + f1) / 2


def load_annotations(path: str | Path) -> list[dict]:
    """``annotations.json``: the list indexed by ``id - 1``; each item's ``id`` is checked against its position."""
    anns = json.loads(Path(path).read_text(encoding="utf-8"))
    for i, a in enumerate(anns, 1):
        if a.get("id", i) != i:
            raise ValueError(f"{path}: item {i} has id {a.get('id')} (AMBER indexes annotations by id - 1)")
    return anns
