"""POPE scoring exactly as the community does it: four published answer parsers and the metrics.

Parsers (each as its source repository writes it):

* ``pope`` (default): POPE's official ``evaluate.py`` = LLaVA's ``eval_pope.py``: keep the text before the first
  period, delete commas, split on single spaces; **no** if a token is exactly ``No``, ``not`` or ``no``, else
  **yes** (case-sensitive, no stripping: ``NO`` and the empty string are yes).
* ``opera``: delete periods and commas, split on spaces; **no** if a token is ``No``/``not``/``no``/``NO`` or ends
  with ``n't``.
* ``vcd``: label-dependent substring test on the lower-cased, stripped answer: for a yes label, yes iff ``yes``
  occurs; for a no label, no iff ``no`` occurs anywhere.
* ``lmms-eval``: the lower-cased, stripped answer itself; only exact ``yes``/``no`` count in precision/recall, any
  other string is wrong for accuracy (its yes-ratio bug, computed from labels, is *not* reproduced: hallufix's
  yes-ratio always comes from predictions).

Metrics: yes is the positive class; division by zero gives 0 with the raw counts reported.
"""
from __future__ import annotations

PARSERS = ("pope", "opera", "vcd", "lmms-eval")


def parse_yes_no(text: str, parser: str = "pope", label: str | None = None) -> str:
    """``"yes"``, ``"no"`` or (``lmms-eval`` only) the raw normalised text. ``vcd`` needs the ``label``."""
    if parser == "pope":
        t = text.split(".")[0] if "." in text else text
        words = t.replace(",", "").split(" ")
        return "no" if any(w in ("No", "not", "no") for w in words) else "yes"
    if parser == "opera":
        words = text.replace(".", "").replace(",", "").split(" ")
        return "no" if any(w in ("No", "not", "no", "NO") or w.endswith("n't") for w in words) else "yes"
    if parser == "vcd":
        if label is None:
            raise ValueError("the vcd parser needs the label (its rule is label-dependent)")
        t = text.lower().strip()
        if label == "yes":
            return "yes" if "yes" in t else "no"
        return "no" if "no" in t else "yes"
    if parser == "lmms-eval":
        return text.lower().strip()
    raise ValueError(f"unknown POPE parser '{parser}'; known: {', '.join(PARSERS)}")


def pope_metrics(labels: list[str], preds: list[str]) -> dict:
    """Accuracy, precision, recall, F1, yes-ratio and TP/FP/TN/FN for one split.

    ``preds`` that are neither ``yes`` nor ``no`` (``lmms-eval``) count as wrong and enter no confusion cell."""
    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    tp = sum(l == "yes" and p == "yes" for l, p in zip(labels, preds))
    fp = sum(l == "no" and p == "yes" for l, p in zip(labels, preds))
    tn = sum(l == "no" and p == "no" for l, p in zip(labels, preds))
    fn = sum(l == "yes" and p == "no" for l, p in zip(labels, preds))
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(p == "yes" for p in preds) / n if n else 0.0, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "n": n}


def score_splits(rows: list[tuple[str, str, str]]) -> dict[str, dict]:
    """``rows`` of ``(split, label, pred)`` -> per-split metrics plus ``{"all": {"mean_f1": ...}}`` (the unweighted
    mean of the per-split F1, LLaVA-1.5's single POPE number)."""
    splits: dict[str, tuple[list, list]] = {}
    for split, label, pred in rows:
        ls, ps = splits.setdefault(split, ([], []))
        ls.append(label)
        ps.append(pred)
    out = {s: pope_metrics(ls, ps) for s, (ls, ps) in sorted(splits.items())}
    out["all"] = {"mean_f1": sum(m["f1"] for m in out.values()) / len(out) if out else 0.0,
                  "accuracy": sum(m["accuracy"] * m["n"] for m in out.values()) / max(1, sum(m["n"] for m in
                                                                                           out.values()))}
    return out
