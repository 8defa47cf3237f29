"""RePOPE: POPE's COCO questions scored against RePOPE's corrected labels as well as POPE's own.

``--task repope:POPE_PATH task.repope_labels=DIR`` — ``POPE_PATH`` is anything the ``pope`` task reads (the COCO
label folder, a label file, LLaVA's combined file with ``task.labels=``); ``DIR`` is the user's copy of RePOPE's
``annotations/`` folder (``coco_repope_<split>.json``; hallufix ships no label file: RePOPE states no licence).
The model answers every POPE question once; the same answers are scored per split under POPE's labels
(``random``, ...) and RePOPE's (``repope-random``, ...: ambiguous questions dropped, wrong labels flipped).

RePOPE labels join POPE questions on (image, object): RePOPE relabels POPE's current files (v4), whose question
ids it keeps, while LLaVA-1.5's random split (v1) numbers different questions; the object is read from the question
text (``Is there a/an OBJECT in the image?``, tolerant of v1's "imange" typo). Options as for ``pope``, and
``parser=repope`` (RePOPE's substring rule and its metrics, where unparsed answers leave the denominators). The
``vcd`` parser is label-dependent; it reads POPE's label, so its RePOPE-label scores use POPE-label parses.
"""
from __future__ import annotations

import re
from pathlib import Path

from hallufix.scoring.repope import PARSERS, parse, score_both
from hallufix.tasks.base import MetricInfo, Sample, TaskError, register_task
from hallufix.tasks.pope import Pope, normalise_record, read_records

QUESTION = re.compile(r"Is there (?:an? )?(.+?) in the ima?n?ge\s*\?")


def object_key(image: str, text: str) -> tuple[str, str]:
    """``(image, object)`` of a POPE question; :class:`TaskError` for a text not in POPE's form."""
    m = QUESTION.search(text)
    if not m:
        raise TaskError(f"not a POPE question (expected 'Is there a/an OBJECT in the image?'): {text!r}")
    return image, m.group(1)


def repope_files(path: str | Path) -> dict[str, Path]:
    """``{split: file}`` for a ``coco_repope_<split>.json`` file or a folder of them."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("*_repope_*.json*")) if p.is_dir() else []
    if not files:
        raise TaskError(f"no RePOPE label files (coco_repope_<split>.json) at {p}; they are in the annotations/ "
                        f"folder of github.com/YanNeu/RePOPE")
    out = {}
    for f in files:
        m = re.search(r"_repope_([a-z]+)\.jsonl?$", f.name)
        out[m.group(1) if m else f.stem] = f
    return out


def load_repope(path: str | Path) -> dict[str, dict[tuple[str, str], str]]:
    """``{split: {(image, object): "yes"|"no"}}`` from RePOPE's label files (a repeated key is an error)."""
    out: dict[str, dict] = {}
    for split, f in repope_files(path).items():
        labels = out.setdefault(split, {})
        for i, raw in enumerate(read_records(f), 1):
            r = normalise_record(raw, f"{f}:{i}")
            key = object_key(r["image"], r["text"])
            if key in labels:
                raise TaskError(f"{f}:{i}: question {key} appears twice")
            if r["label"] not in ("yes", "no"):
                raise TaskError(f"{f}:{i}: label {r['label']!r} is not yes/no")
            labels[key] = r["label"]
    return out


@register_task("repope")
class Repope(Pope):
    """POPE questions; metrics per split under POPE's labels and, as ``repope-<split>``, under RePOPE's; ``all``
    holds ``mean_f1`` (POPE labels) and ``repope_mean_f1``."""

    name = "repope"
    metrics = Pope.metrics + (MetricInfo("repope_mean_f1", True), MetricInfo("n_scored", None))

    def __init__(self, path: str, repope_labels: str | None = None, parser: str = "pope", image_root: str = ".",
                 prompt: str = "llava", splits: str | list[str] = "", labels: str | None = None,
                 max_new_tokens: int = 8):
        if parser not in PARSERS:
            raise TaskError(f"unknown RePOPE/POPE parser '{parser}'; known: {', '.join(PARSERS)}")
        if not repope_labels:
            raise TaskError("the repope task needs the RePOPE label files: task.repope_labels=DIR (the annotations/ "
                            "folder of github.com/YanNeu/RePOPE, coco_repope_<split>.json)")
        super().__init__(path, image_root=image_root, prompt=prompt, parser="pope", splits=splits, labels=labels,
                         max_new_tokens=max_new_tokens)
        self.parser, self.repope_labels = parser, repope_labels

    def samples(self) -> list[Sample]:
        relabels = load_repope(self.repope_labels)
        out = super().samples()
        for s in out:
            key = object_key(s.meta["image"], s.question)
            label = relabels.get(s.split, {}).get(key)
            s.meta["repope_label"] = label
            s.meta["answers"] = {f"repope-{s.split}": label} if label is not None else {}
        return out

    def parse(self, sample: Sample, text: str) -> str | None:
        return parse(text, self.parser, label=sample.answer)

    def score(self, records) -> dict[str, dict[str, float]]:
        return score_both([(r["split"], r["answer"], r["meta"].get("repope_label"), r["parsed"]) for r in records],
                          self.parser)

    def record(self) -> dict:
        return {**super().record(), "repope_labels": str(self.repope_labels)}
