"""POPE from its official files (``benchmarks.md`` §1): COCO / A-OKVQA / GQA label files in JSON Lines or JSON-array
form, the current (3000 per split) and LLaVA-1.5 (2910 random) versions, and LLaVA's combined question file.

``--task pope:PATH`` with PATH a label file or a folder of ``*_pope_<split>.json`` files; images under
``task.image_root``. The LLaVA suffix is appended by default (``task.prompt=llava``); ``vcd`` and ``none`` too.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from hallufix.scoring.pope import PARSERS, parse_yes_no, score_splits
from hallufix.tasks.base import MetricInfo, Sample, Task, TaskError, register_task

PROMPTS = {"llava": "\nAnswer the question using a single word or phrase.",
           "vcd": " Please answer this question with one word.", "none": ""}
LLAVA_SPLIT_OFFSETS = {"adversarial": 0, "random": 10_000_000, "popular": 20_000_000}


def read_records(path: Path) -> list[dict]:
    """JSON Lines or a JSON array; a malformed line raises :class:`TaskError` with file and line number."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path}:{i}: malformed JSON line ({exc.msg})") from None
    return out


def split_of(path: Path) -> str:
    m = re.search(r"_pope_([a-z]+)\.json", path.name)
    return m.group(1) if m else path.stem


def label_files(path: str | Path) -> dict[str, Path]:
    """``{split: file}`` for a label file or a folder of them."""
    p = Path(path)
    if p.is_file():
        return {split_of(p): p}
    if p.is_dir():
        files = sorted(p.glob("*_pope_*.json")) + sorted(p.glob("*_pope_*.jsonl"))
        if files:
            return {split_of(f): f for f in files}
        raise TaskError(f"{p} holds no *_pope_<split>.json files")
    raise TaskError(f"POPE questions not found: {p}")


def load_labels(path: str | Path) -> dict[str, list[dict]]:
    """``{split: records}`` (records keep ``question_id``, ``image``, ``text``, ``label``)."""
    return {split: read_records(f) for split, f in label_files(path).items()}


@register_task("pope")
class Pope(Task):
    """POPE questions with labels; scored per split plus the mean F1 over splits."""

    name = "pope"
    max_new_tokens = 8
    metrics = (MetricInfo("accuracy", True), MetricInfo("precision", True), MetricInfo("recall", True),
               MetricInfo("f1", True), MetricInfo("yes_ratio", None), MetricInfo("mean_f1", True))

    def __init__(self, path: str, image_root: str = ".", prompt: str = "llava", parser: str = "pope",
                 splits: str = ""):
        if prompt not in PROMPTS:
            raise TaskError(f"unknown POPE prompt '{prompt}'; known: {', '.join(PROMPTS)}")
        if parser not in PARSERS:
            raise TaskError(f"unknown POPE parser '{parser}'; known: {', '.join(PARSERS)}")
        self.path, self.image_root, self.prompt, self.parser = path, Path(image_root), prompt, parser
        self.splits = [s for s in splits.split(",") if s] if splits else None

    def samples(self):
        out = []
        for split, recs in sorted(load_labels(self.path).items()):
            if self.splits and split not in self.splits:
                continue
            for r in recs:
                out.append(Sample(id=f"{split}-{r['question_id']}", question=r["text"] + PROMPTS[self.prompt],
                                  image=str(self.image_root / r["image"]), answer=r.get("label"), split=split,
                                  meta={"question_id": r["question_id"], "image": r["image"]}))
        return out

    def parse(self, sample, text):
        return parse_yes_no(text, self.parser, label=sample.answer)

    def score(self, records):
        return score_splits([(r["split"], r["answer"], r["parsed"]) for r in records])


def join_answers(labels: dict[str, list[dict]], answers: list[dict], questions: list[dict] | None = None):
    """Pair answers with labels: through LLaVA's combined question file (``category`` per question id, answers
    paired in order within a category, as LLaVA's ``eval_pope.py`` does), by a ``category`` field on the answers, or by
    ``question_id`` within a single split. Returns ``{split: [(label, answer_text)]}``."""
    out: dict[str, list] = {}
    if questions is not None:
        cat = {q["question_id"]: q["category"] for q in questions}
        per: dict[str, list] = {}
        for a in answers:
            if a["question_id"] not in cat:
                raise TaskError(f"answer question_id {a['question_id']} is not in the question file")
            per.setdefault(cat[a["question_id"]], []).append(a["text"])
        for split, texts in per.items():
            if split not in labels:
                raise TaskError(f"answers have category '{split}' but no label file for it")
            if len(texts) != len(labels[split]):
                raise TaskError(f"split {split}: {len(texts)} answers for {len(labels[split])} labelled questions")
            out[split] = [(l["label"], t) for l, t in zip(labels[split], texts)]
        return out
    if len(labels) == 1 or all("category" in a for a in answers):
        for split, recs in labels.items():
            by_id = {r["question_id"]: r["label"] for r in recs}
            sel = [a for a in answers if a.get("category", split) == split]
            missing = [a["question_id"] for a in sel if a["question_id"] not in by_id]
            if missing:
                raise TaskError(f"split {split}: answers for unknown question ids {missing[:5]}")
            out[split] = [(by_id[a["question_id"]], a["text"]) for a in sel]
        return out
    raise TaskError("several label files but answers carry no category: pass LLaVA's question file too "
                    "(--questions llava_pope_test.jsonl) or score one split at a time")
