"""A generic task for custom data: ``--task jsonl:PATH``, one ``{"image", "question"[, "answer"]}`` per line.

Optional keys: ``id`` (default: the line number) and ``split`` (default ``all``). Image paths are relative to the
file's folder unless absolute; a missing image raises :class:`TaskError` naming it when the sample is loaded.
Scoring: when every answer is yes/no, the POPE metrics (accuracy, precision, recall, F1, yes-ratio, counts; the
answer parsed with ``parser``, default the official POPE rule) per split and over ``all``; otherwise exact match
(case-insensitive, trimmed). Without answers, outputs are only recorded. A malformed line raises
:class:`TaskError` with file and line number; a file without samples too.
"""
from __future__ import annotations

import json
from pathlib import Path

from hallufix.scoring.pope import PARSERS, parse_yes_no, pope_metrics
from hallufix.tasks.base import MetricInfo, Sample, Task, TaskError, read_text, register_task


@register_task("jsonl")
class JsonlTask(Task):
    name = "jsonl"
    metrics = (MetricInfo("accuracy", True), MetricInfo("precision", True), MetricInfo("recall", True),
               MetricInfo("f1", True), MetricInfo("exact_match", True), MetricInfo("yes_ratio", None),
               *(MetricInfo(c, None) for c in ("tp", "fp", "tn", "fn", "n")))

    def __init__(self, path: str, max_new_tokens: int = 16, parser: str = "pope"):
        if parser not in PARSERS:
            raise TaskError(f"unknown yes/no parser '{parser}'; known: {', '.join(PARSERS)}")
        self.path, self.max_new_tokens, self.parser = Path(path), int(max_new_tokens), parser

    def samples(self):
        out = []
        for i, line in enumerate(read_text(self.path, "task file").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{self.path}:{i}: malformed JSON line ({exc.msg})") from None
            if not isinstance(rec, dict) or "image" not in rec or "question" not in rec:
                raise TaskError(f"{self.path}:{i}: each line needs 'image' and 'question'")
            if not isinstance(rec["question"], str) or not isinstance(rec["image"], str):
                raise TaskError(f"{self.path}:{i}: 'image' and 'question' must be strings")
            image = Path(rec["image"])
            image = image if image.is_absolute() else self.path.parent / image
            out.append(Sample(id=str(rec.get("id", i)), question=rec["question"], image=str(image),
                              answer=rec.get("answer"), split=str(rec.get("split", "all"))))
        if not out:
            raise TaskError(f"{self.path} holds no samples")
        return out

    def _yes_no(self, records) -> bool:
        return all(str(r["answer"]).strip().lower() in ("yes", "no") for r in records)

    def parse(self, sample, text):
        if sample.answer is not None and str(sample.answer).strip().lower() in ("yes", "no"):
            return parse_yes_no(text, self.parser, label=str(sample.answer).strip().lower())
        return text.strip()

    def score(self, records):
        scored = [r for r in records if r.get("answer") is not None]
        if not scored:
            return {"all": {}}
        if self._yes_no(scored):
            out = {}
            for split in sorted({r["split"] for r in scored}):
                rs = [r for r in scored if r["split"] == split]
                out[split] = pope_metrics([str(r["answer"]).strip().lower() for r in rs], [r["parsed"] for r in rs])
            out["all"] = pope_metrics([str(r["answer"]).strip().lower() for r in scored], [r["parsed"] for r in scored])
            return out

        def em(rs):
            hits = sum(str(r["parsed"]).strip().lower() == str(r["answer"]).strip().lower() for r in rs)
            return {"exact_match": hits / len(rs), "n": len(rs)}

        out = {split: em([r for r in scored if r["split"] == split]) for split in sorted({r["split"] for r in scored})}
        out["all"] = em(scored)
        return out
