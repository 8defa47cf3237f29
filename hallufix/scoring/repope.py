"""RePOPE scoring (YanNeu/RePOPE ``src/eval_utils.py``): its answer parser, its metrics and the relabelling table.

* :func:`parse_repope` — ``compute_answer`` on the lower-cased response: substring ``yes`` -> yes, else substring
  ``no`` -> no, else ``None`` (its third test, substring ``not``, can never fire: ``not`` contains ``no``). Being
  substring tests, ``"I don't know"`` -> no (from "know"), ``"eyes"`` -> yes.
* :func:`repope_metrics` — ``compute_results``: positive = yes; a ``None`` prediction enters no confusion cell and
  leaves every denominator (accuracy's and the yes-ratio's too). No rounding. The official code does not guard
  division by zero; here an empty denominator gives 0.0 with the counts reported.
* :func:`relabel_table` — RePOPE's Table 1: per split, how the POPE yes / no labels were relabelled (yes, no, or
  dropped as ambiguous), as counts and percentages.

Pure Python, no torch.
"""
from __future__ import annotations

from typing import Iterable, Mapping


def parse_repope(text: str) -> str | None:
    """``"yes"``, ``"no"`` or ``None`` by RePOPE's substring rule."""
    t = text.lower()
    if "yes" in t:
        return "yes"
    if "no" in t:
        return "no"
    return None


def repope_metrics(labels: list[str], preds: list[str | None]) -> dict:
    """Accuracy, precision, recall, F1, yes-ratio and TP/FP/TN/FN over the predictions that are exactly yes or no.

    ``n`` is the number of questions given, ``n_scored`` those with a yes/no prediction (the denominators)."""
    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    pairs = [(l, p) for l, p in zip(labels, preds) if p in ("yes", "no")]
    tp = sum(l == "yes" and p == "yes" for l, p in pairs)
    fp = sum(l == "no" and p == "yes" for l, p in pairs)
    tn = sum(l == "no" and p == "no" for l, p in pairs)
    fn = sum(l == "yes" and p == "no" for l, p in pairs)
    total = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / total if total else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / total if total else 0.0, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "n": len(labels), "n_scored": total}


def relabel_table(pope: Mapping[object, str], repope: Mapping[object, str]) -> dict:
    """``{"yes": {...}, "no": {...}}`` for one split: per POPE label the counts and percentages (one decimal, as in
    RePOPE's Table 1) of questions RePOPE labels yes, no, or dropped (key absent from ``repope``).

    ``pope`` and ``repope`` map the same question keys to ``"yes"``/``"no"``; a RePOPE key absent from ``pope``
    raises :class:`ValueError`."""
    extra = [k for k in repope if k not in pope]
    if extra:
        raise ValueError(f"{len(extra)} RePOPE questions are not among the POPE questions (first: {extra[:3]})")
    out = {}
    for old in ("yes", "no"):
        keys = [k for k, v in pope.items() if v == old]
        counts = {"yes": sum(repope.get(k) == "yes" for k in keys), "no": sum(repope.get(k) == "no" for k in keys),
                  "ambiguous": sum(k not in repope for k in keys)}
        n = len(keys)
        out[old] = {"n": n, **counts, **{f"{k}_pct": round(100 * v / n, 1) if n else 0.0 for k, v in counts.items()}}
    return out


def mean_f1(per_split: Iterable[Mapping]) -> float:
    """Unweighted mean of the splits' F1 (RePOPE's "Mean" panel; LLaVA-1.5's single POPE number)."""
    f1s = [m["f1"] for m in per_split]
    return sum(f1s) / len(f1s) if f1s else 0.0


PARSERS = ("pope", "opera", "vcd", "lmms-eval", "repope")


def parse(text: str, parser: str, label: str | None = None) -> str | None:
    """RePOPE's parser (``repope``) or one of POPE's (:func:`hallufix.scoring.pope.parse_yes_no`)."""
    if parser == "repope":
        return parse_repope(text)
    from hallufix.scoring.pope import parse_yes_no

    return parse_yes_no(text, parser, label=label)


def score_both(rows: Iterable[tuple[str, str, str | None, str | None]], parser: str) -> dict[str, dict]:
    """``rows`` of ``(split, pope_label, repope_label or None if dropped, prediction)`` -> ``{split: metrics}`` under
    POPE's labels, ``{"repope-<split>": metrics}`` under RePOPE's (dropped questions left out) and ``"all"`` with
    ``mean_f1`` / ``repope_mean_f1`` — the same predictions scored twice, as RePOPE's ``evaluate.py`` does.

    With the ``repope`` parser the metrics are RePOPE's (:func:`repope_metrics`: unparsed answers leave the
    denominators); with a POPE parser they are POPE's (:func:`hallufix.scoring.pope.pope_metrics`)."""
    from hallufix.scoring.pope import pope_metrics

    metric = repope_metrics if parser == "repope" else pope_metrics
    per: dict[str, tuple[list, list]] = {}
    for split, pope_label, repope_label, pred in rows:
        ls, ps = per.setdefault(split, ([], []))
        ls.append(pope_label)
        ps.append(pred)
        if repope_label is not None:
            ls, ps = per.setdefault(f"repope-{split}", ([], []))
            ls.append(repope_label)
            ps.append(pred)
    out = {s: metric(ls, ps) for s, (ls, ps) in sorted(per.items())}
    pope_splits = [m for s, m in out.items() if not s.startswith("repope-")]
    repope_splits = [m for s, m in out.items() if s.startswith("repope-")]
    out["all"] = {"mean_f1": mean_f1(pope_splits), "repope_mean_f1": mean_f1(repope_splits)}
    return out
