"""Statistics of run metrics: vectorised (stratified, paired) bootstrap for every metric, exact McNemar, Holm.

A run's finished records become a table of *units* — the things the benchmark averages over — with numpy feature
columns and a stratum per unit:

* ``yesno`` (POPE, JSONL yes/no tasks, ``shapes-pope``): one unit per question; stratum = split; features
  ``gold_yes``, ``pred_yes``, ``pred_no``. Accuracy, precision, recall, F1, yes-ratio per split, mean F1 over
  splits.
* ``mme`` (tasks scoring ``acc_plus``): one unit per image (its yes and its no question); stratum = subtask;
  features ``c1``, ``c2`` (each question right, by the official parser). acc, acc+, score per subtask, and every
  total of :data:`hallufix.scoring.mme.TOTALS` that the run reports.
* ``chair`` (tasks writing ``sample_stats.json``): one unit per caption with its mention counts. CHAIR_s,
  CHAIR_i, recall.

:func:`bootstrap` resamples units with replacement *within each stratum* (so every split / subtask keeps its size,
as the benchmark's design does), ``n_boot`` times, with one ``(n_boot, n)`` index array per chunk — every metric of
every resample is a few numpy reductions, no Python loop over resamples. Passing two unit tables matched by unit key
gives a *paired* bootstrap: the same indices for both runs, so the interval is that of the difference. Intervals are
percentile intervals (95%); the two-sided bootstrap p-value is ``2 * min(P(d <= 0), P(d >= 0))`` over resamples.

:func:`mcnemar_exact` is the exact McNemar test (``scipy.stats.binomtest`` on the discordant pairs).
:func:`holm` is Holm's step-down correction over a family of p-values (the rows of one report's comparison).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK = 250


@dataclass
class Units:
    """``kind``; ``keys`` (unit id per row); ``strata`` (name per row); ``features`` ``{name: (n,) array}``."""

    kind: str
    keys: list[str]
    strata: list[str]
    features: dict[str, np.ndarray]

    def subset(self, keys: list[str]) -> "Units":
        pos = {k: i for i, k in enumerate(self.keys)}
        rows = [pos[k] for k in keys]
        return Units(self.kind, list(keys), [self.strata[i] for i in rows],
                     {k: v[rows] for k, v in self.features.items()})


def _yes(value) -> bool:
    return str(value).strip().lower() == "yes"


def _no(value) -> bool:
    return str(value).strip().lower() == "no"


def units_of(run_dir: str | Path, res: dict, records: dict[str, dict]) -> Units | None:
    """The unit table of a run (see the module docstring), or ``None`` for a task of none of the three kinds."""
    metric_names = {m for split in res["metrics"].values() for m in split}
    recs = [records[k] for k in sorted(records)]
    stats_path = Path(run_dir) / "sample_stats.json"
    if stats_path.is_file():
        per = json.loads(stats_path.read_text(encoding="utf-8"))
        keys = sorted(k for k in per if k in records)
        feats = {c: np.array([float(per[k][c]) for k in keys]) for c in ("mentions", "hallucinated", "covered", "gt")}
        return Units("chair", keys, ["all"] * len(keys), feats)
    if not recs or not all(str(r.get("answer", "")).strip().lower() in ("yes", "no") for r in recs):
        return None
    if "acc_plus" in metric_names:
        from hallufix.scoring.mme import parse_mme

        pairs: dict[tuple, list] = {}
        for r in sorted(recs, key=lambda r: r["id"]):
            meta = r.get("meta") or {}
            image = meta.get("image", meta.get("scene"))
            right = parse_mme(str(r.get("parsed") or "")) == str(r["answer"]).strip().lower()
            pairs.setdefault((r["split"], str(image)), []).append(right)
        if any(len(v) != 2 for v in pairs.values()):
            return None  # an image without its pair (a --limit cut): acc+ is undefined for it
        keys = sorted(pairs)
        return Units("mme", [f"{s}/{i}" for s, i in keys], [s for s, _ in keys],
                     {"c1": np.array([pairs[k][0] for k in keys]), "c2": np.array([pairs[k][1] for k in keys])})
    # one unit per (sample, split it is scored in): a record also scored under another label set carries that
    # split's gold answer in meta["answers"] (RePOPE's "repope-<split>"; a dropped question has none there)
    rows = []
    for r in recs:
        rows.append((r["id"], r["split"], r["answer"], r.get("parsed")))
        for split, gold in ((r.get("meta") or {}).get("answers") or {}).items():
            if split != r["split"] and gold is not None:
                rows.append((f"{split}/{r['id']}", split, gold, r.get("parsed")))
    return Units("yesno", [k for k, *_ in rows], [s for _, s, *_ in rows],
                 {"gold_yes": np.array([_yes(g) for *_, g, _ in rows]),
                  "pred_yes": np.array([_yes(p) for *_, p in rows]),
                  "pred_no": np.array([_no(p) for *_, p in rows])})


def _order(units: Units) -> tuple[np.ndarray, dict[str, slice]]:
    """Row order grouping strata contiguously, and each stratum's column slice."""
    names = sorted(set(units.strata))
    order, slices, start = [], {}, 0
    for s in names:
        rows = [i for i, x in enumerate(units.strata) if x == s]
        order.extend(rows)
        slices[s] = slice(start, start + len(rows))
        start += len(rows)
    return np.array(order, dtype=np.int64), slices


def _ratio(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def metric_values(units: Units, idx: np.ndarray, slices: dict[str, slice], wanted: dict[str, set[str]]
                  ) -> dict[tuple[str, str], np.ndarray]:
    """``{(split, metric): (B,) values}`` for index rows ``idx`` ``(B, n)`` into the (stratum-ordered) features.
    ``wanted``: the metrics the run reports, ``{split: {metric}}`` (only those are computed)."""
    f = {k: v[idx] for k, v in units.features.items()}
    out: dict[tuple[str, str], np.ndarray] = {}
    if units.kind == "yesno":
        f1s = []
        for s, sl in slices.items():
            g, p, q = f["gold_yes"][:, sl], f["pred_yes"][:, sl], f["pred_no"][:, sl]
            tp, fp = (g & p).sum(1), (~g & p).sum(1)
            tn, fn = (~g & q).sum(1), (g & q).sum(1)
            n = g.shape[1]
            vals = {"accuracy": (tp + tn) / n, "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
                    "f1": _ratio(2 * tp, 2 * tp + fp + fn), "yes_ratio": p.mean(1)}
            f1s.append(vals["f1"])
            for m, v in vals.items():
                if m in wanted.get(s, ()):
                    out[(s, m)] = v
        if "mean_f1" in wanted.get("all", ()):
            out[("all", "mean_f1")] = np.mean(f1s, axis=0)
    elif units.kind == "mme":
        from hallufix.scoring.mme import TOTALS

        scores = {}
        for s, sl in slices.items():
            c1, c2 = f["c1"][:, sl], f["c2"][:, sl]
            acc = 100 * (c1.sum(1) + c2.sum(1)) / (2 * c1.shape[1])
            acc_plus = 100 * (c1 & c2).mean(1)
            scores[s] = acc + acc_plus
            for m, v in (("acc", acc), ("acc_plus", acc_plus), ("score", scores[s])):
                if m in wanted.get(s, ()):
                    out[(s, m)] = v
        for total, names in TOTALS.items():
            if total in wanted.get("all", ()) and all(n in scores for n in names):
                out[("all", total)] = sum(scores[n] for n in names)
    elif units.kind == "chair":
        h, m, cov, gt = f["hallucinated"], f["mentions"], f["covered"], f["gt"]
        vals = {"chair_s": 100 * (h > 0).mean(1), "chair_i": 100 * _ratio(h.sum(1), m.sum(1)),
                "recall": 100 * _ratio(cov.sum(1), gt.sum(1))}
        out.update({("all", k): v for k, v in vals.items() if k in wanted.get("all", ())})
    return out


def _indices(rng, slices: dict[str, slice], b: int) -> np.ndarray:
    cols = [rng.integers(sl.start, sl.stop, size=(b, sl.stop - sl.start), dtype=np.int64) for sl in slices.values()]
    return np.concatenate(cols, axis=1)


def bootstrap(units: Units, wanted: dict[str, set[str]], other: Units | None = None, n_boot: int = 2000,
              seed: int = 0) -> dict[tuple[str, str], dict]:
    """Per ``(split, metric)``: ``{"value", "ci95": [lo, hi]}`` for one run, or — with ``other`` (a unit table of
    the same keys, in the same order) — the paired difference ``other - units``: ``{"diff", "ci95", "p"}``."""
    order, slices = _order(units)
    base = Units(units.kind, [units.keys[i] for i in order], [units.strata[i] for i in order],
                 {k: v[order] for k, v in units.features.items()})
    alt = None
    if other is not None:
        alt = Units(other.kind, [other.keys[i] for i in order], [other.strata[i] for i in order],
                    {k: v[order] for k, v in other.features.items()})
    ident = np.arange(len(order))[None, :]
    point = metric_values(base, ident, slices, wanted)
    if alt is not None:
        alt_point = metric_values(alt, ident, slices, wanted)
        point = {k: alt_point[k] - v for k, v in point.items() if k in alt_point}
    rng = np.random.default_rng(seed)
    draws: dict[tuple[str, str], list] = {k: [] for k in point}
    done = 0
    while done < n_boot:
        b = min(CHUNK, n_boot - done)
        idx = _indices(rng, slices, b)
        vals = metric_values(base, idx, slices, wanted)
        if alt is not None:
            alt_vals = metric_values(alt, idx, slices, wanted)
            vals = {k: alt_vals[k] - v for k, v in vals.items() if k in alt_vals}
        for k in draws:
            draws[k].append(vals[k])
        done += b
    out = {}
    for k, v in point.items():
        d = np.concatenate(draws[k]) if draws[k] else np.array([float(v[0])])
        lo, hi = (float(x) for x in np.percentile(d, [2.5, 97.5]))
        if alt is None:
            out[k] = {"value": float(v[0]), "ci95": [lo, hi]}
        else:
            p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
            out[k] = {"diff": float(v[0]), "ci95": [lo, hi], "p": p}
    return out


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs (``scipy.stats.binomtest`` of
    ``min(b, c)`` successes in ``b + c`` trials at 1/2)."""
    from scipy.stats import binomtest

    n = b + c
    return 1.0 if n == 0 else float(binomtest(min(b, c), n, 0.5).pvalue)


def correctness(units: Units) -> dict[str, np.ndarray] | None:
    """Per-question correctness by stratum for McNemar (``yesno``: one question per unit; ``mme``: two)."""
    if units.kind == "yesno":
        f = units.features
        right = (f["gold_yes"] & f["pred_yes"]) | (~f["gold_yes"] & f["pred_no"])
        strata = np.array(units.strata)
        return {s: right[strata == s] for s in sorted(set(units.strata))}
    if units.kind == "mme":
        strata = np.array(units.strata)
        f = units.features
        return {s: np.concatenate([f["c1"][strata == s], f["c2"][strata == s]]) for s in sorted(set(units.strata))}
    return None


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error control) for a list with ``None`` gaps."""
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None and p == p]
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
