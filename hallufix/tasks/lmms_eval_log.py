"""lmms-eval sample logs (``--log_samples``): one ``<date>_samples_<task>.jsonl`` per task, read for scoring.

Layout written by lmms-eval 0.4 to 0.7 (``EvaluationTracker.save_results_samples``), one JSON object per line with
keys in this order: ``doc_id``, ``target`` (``str()`` of ``doc_to_target``: ``"yes"``, ``"Yes"``, or for CHAIR
the ``repr`` of the object list), ``resps`` (only when it differs from ``filtered_resps``), ``filtered_resps`` (the
response the task scored: a string for a ``generate_until`` task), ``token_counts``, ``doc_hash``, then one key per
metric holding what the task's ``process_results`` returned, then ``input`` (the prompt). The ``doc`` itself is
*not* written (popped before the dump); logs from lmms-eval 0.3 and older carry it as ``doc``. What each task
leaves per line:

* ``pope``, ``pope_adv``, ``pope_pop``, ``pope_random`` (``pope_full`` is the group of the last three):
  ``pope_accuracy`` = ``{question_id, score, prediction, ground_truth}`` (the label lower-cased);
* ``mme``: ``mme_perception_score`` or ``mme_cognition_score`` = ``{question_id, category, score}``, where
  ``question_id`` is the image path (``code_reasoning/0020.png``), shared by an image's two questions; the label
  is ``target``;
* ``coco_cap_chair``: ``coco_cap_chair_i`` (and ``_s``, ``recall``) = ``{answer: GT object list, pred: the node
  words lmms-eval found, image_id}``.
"""
from __future__ import annotations

import re
from pathlib import Path

from hallufix.tasks.base import TaskError
from hallufix.tasks.pope import read_records

#: lmms-eval task name -> POPE split (``pope`` pools the three samplings into one confusion matrix).
POPE_TASKS = {"pope": "pope", "pope_adv": "adversarial", "pope_pop": "popular", "pope_random": "random"}
MME_KEYS = ("mme_perception_score", "mme_cognition_score")
CHAIR_KEYS = ("coco_cap_chair_i", "coco_cap_chair_s", "coco_cap_recall")

#: What a re-score of an lmms-eval log cannot undo, per benchmark (printed with the scores).
NOTES = {
    "pope": ["lmms-eval generated with its own prompt (question + '\\nAnswer the question using a single word or "
             "phrase.') and up to 128 new tokens on lmms-lab/POPE (3000 questions per sampling, not LLaVA-1.5's "
             "2910-question random split); the `pope` task pools the three samplings (use pope_full's three logs "
             "for per-split figures); --parser lmms-eval gives lmms-eval's own accuracy / precision / recall / F1"],
    "mme": ["lmms-eval generated with its own prompt (' Please answer yes or no.' replaced by '\\nAnswer the "
            "question using a single word or phrase.') and up to 16 new tokens; the official rule parses the "
            "response here, --parser lmms-eval gives lmms-eval's parse (periods removed, 'y'/'n' accepted)"],
    "chair": ["lmms-eval's coco_cap_chair generated up to 2048 new tokens with no stop string (the papers use 512, "
              "or 64 for the short setting, and OPERA drops an unfinished last sentence): longer captions cannot "
              "be shortened afterwards",
              "the ground-truth objects are those of the log (dataset tsunghanwu/mscoco_chair, field gt_object) "
              "unless --gt-objects gives a table; lmms-eval reports no length"],
}


def task_of(path: str | Path) -> str:
    """``20250707_132631_samples_pope_adv.jsonl`` -> ``pope_adv`` (the name lmms-eval gave the file)."""
    m = re.search(r"_samples_(.+?)\.jsonl$", Path(path).name)
    return m.group(1) if m else Path(path).stem


def is_sample_log(records: list[dict]) -> bool:
    """True for lmms-eval sample-log lines (``doc_id`` and ``filtered_resps`` on the first)."""
    return bool(records) and "doc_id" in records[0] and "filtered_resps" in records[0]


def read_sample_log(path: str | Path) -> list[dict]:
    """The lines of one sample log; :class:`TaskError` naming file and line where one lacks a key scoring needs."""
    recs = read_records(Path(path))
    if not recs:
        raise TaskError(f"{path}: empty lmms-eval sample log")
    for i, r in enumerate(recs, 1):
        missing = [k for k in ("doc_id", "filtered_resps", "target") if k not in r]
        if missing:
            raise TaskError(f"{path}:{i}: not an lmms-eval sample-log line (no {', '.join(missing)}); "
                            f"give the <date>_samples_<task>.jsonl file lmms-eval wrote with --log_samples")
    return recs


def response(rec: dict) -> str:
    """The response lmms-eval scored (``filtered_resps``; a one-element list is unwrapped, as older logs keep it)."""
    r = rec["filtered_resps"]
    while isinstance(r, list):
        r = r[0] if r else ""
    return "" if r is None else str(r)


def _metric(rec: dict, keys: tuple[str, ...], path, i: int, task: str) -> dict:
    for k in keys:
        if isinstance(rec.get(k), dict):
            return rec[k]
    if isinstance(rec.get("doc"), dict):
        return rec["doc"]
    raise TaskError(f"{path}:{i}: no {' / '.join(keys)} record on this line: not a log of lmms-eval's {task} task")


def pope_pairs(path: str | Path) -> tuple[str, list[tuple[str, str]]]:
    """``(split, [(label yes|no, response)])`` of a POPE task's log, in log order."""
    task = task_of(path)
    if task not in POPE_TASKS:
        raise TaskError(f"{path}: expected the log of an lmms-eval POPE task ({', '.join(POPE_TASKS)}), "
                        f"the file name says '{task}'")
    out = []
    for i, rec in enumerate(read_sample_log(path), 1):
        m = _metric(rec, ("pope_accuracy", "pope_f1_score"), path, i, "pope")
        label = str(m.get("ground_truth", m.get("answer", rec["target"]))).strip().lower()
        if label not in ("yes", "no"):
            raise TaskError(f"{path}:{i}: POPE label must be yes or no, got {label!r}")
        out.append((label, response(rec)))
    return POPE_TASKS[task], out


def mme_rows(path: str | Path) -> dict[str, list[tuple[str, str, str]]]:
    """``{subtask: [(image, GT Yes|No, response)]}`` of an ``mme`` log, an image's two questions made adjacent
    (grouped by ``question_id``, the image path, in order of first appearance)."""
    groups: dict[str, dict[str, list[tuple[str, str, str]]]] = {}
    for i, rec in enumerate(read_sample_log(path), 1):
        m = _metric(rec, MME_KEYS, path, i, "mme")
        qid, cat = m.get("question_id"), m.get("category")
        if qid is None or cat is None:
            raise TaskError(f"{path}:{i}: MME record lacks question_id or category")
        gt = str(rec["target"]).strip().rstrip(".").capitalize()
        if gt not in ("Yes", "No"):
            raise TaskError(f"{path}:{i}: MME target must be Yes or No, got {rec['target']!r}")
        groups.setdefault(str(cat), {}).setdefault(str(qid), []).append((str(qid), gt, response(rec)))
    out = {}
    for cat, images in groups.items():
        odd = next((q for q, rows in images.items() if len(rows) != 2), None)
        if odd is not None:
            raise TaskError(f"{path}: MME image {odd} has {len(images[odd])} questions in the log; every image has "
                            f"two (a partial log cannot be scored)")
        out[cat] = [row for rows in images.values() for row in rows]
    return out


def chair_items(path: str | Path) -> list[tuple[int, str, list[str] | None, list[str] | None]]:
    """``[(image_id, caption, GT objects, lmms-eval's node words)]`` of a ``coco_cap_chair`` log."""
    out = []
    for i, rec in enumerate(read_sample_log(path), 1):
        m = _metric(rec, CHAIR_KEYS, path, i, "coco_cap_chair")
        image_id = m.get("image_id", m.get("question_id"))
        if image_id is None:
            raise TaskError(f"{path}:{i}: CHAIR record lacks image_id")
        gt = m.get("answer", m.get("gt_object"))
        pred = m.get("pred")
        out.append((int(image_id), response(rec), list(gt) if gt is not None else None,
                    list(pred) if pred is not None else None))
    return out
