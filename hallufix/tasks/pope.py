"""POPE from its official files (the formats are listed in ``docs/benchmarks.md``, "POPE").

Accepted inputs (``--task pope:PATH`` or ``path=``):

* a label file or a folder of ``*_pope_<split>.json`` label files: COCO, A-OKVQA or GQA, in JSON Lines or
  JSON-array form, current version (3000 questions per split) or the LLaVA-1.5 one (``e3e3926``: 2910 random);
* LLaVA's combined ``llava_pope_test.jsonl`` (``category`` per question, offset question ids, prompt suffix in
  the text), with ``labels=`` the label folder it was built from (LLaVA pairs its questions with the labels in
  order within a category);
* lmms-eval style records (``question`` / ``answer`` instead of ``text`` / ``label``).

Options: ``image_root`` (folder of the images; ``Sample.image`` is a path, checked when loaded), ``prompt``
(``llava``: " Answer the question using a single word or phrase." after a newline, the default; ``vcd``:
" Please answer this question with one word."; ``none``; any other string is appended as is), ``parser``
(``pope``, ``opera``, ``vcd``, ``lmms-eval``), ``splits`` (comma-separated subset). ``max_new_tokens`` is 8.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from hallufix.scoring.pope import PARSERS, parse_yes_no, score_splits
from hallufix.tasks.base import MetricInfo, Sample, Task, TaskError, read_json, read_text, register_task

PROMPTS = {"llava": "\nAnswer the question using a single word or phrase.",
           "vcd": " Please answer this question with one word.", "none": ""}
#: LLaVA's combined file numbers questions as offset + the label file's question id.
LLAVA_SPLIT_OFFSETS = {"adversarial": 0, "random": 10_000_000, "popular": 20_000_000}
SPLIT_NAMES = ("random", "popular", "adversarial")


def read_records(path: Path) -> list[dict]:
    """JSON Lines or a JSON array of objects; a malformed line raises :class:`TaskError` with file and line."""
    text = read_text(path)
    path = Path(path)
    if text.lstrip().startswith("["):
        recs = read_json(path, "label file")
        bad = next((i for i, r in enumerate(recs) if not isinstance(r, dict)), None)
        if bad is not None:
            raise TaskError(f"{path}: element {bad} of the JSON array is not an object")
        return recs
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path}:{i}: malformed JSON line ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise TaskError(f"{path}:{i}: expected a JSON object")
            out.append(rec)
    return out


def split_of(path: Path) -> str:
    """``coco_pope_random.json`` -> ``random``; other names -> the file stem."""
    m = re.search(r"_pope_(?:seem_)?([a-z]+)\.jsonl?$", path.name)
    return m.group(1) if m else path.stem


def normalise_record(rec: dict, where: str) -> dict:
    """``{question_id, image, text, label}`` from official or lmms-eval field names."""
    try:
        out = {"question_id": rec["question_id"], "image": rec["image"], "text": rec.get("text", rec.get("question"))}
    except KeyError as exc:
        raise TaskError(f"{where}: record lacks {exc.args[0]!r} (POPE records have question_id, image, text, "
                        f"label)") from None
    if out["text"] is None:
        raise TaskError(f"{where}: record has neither 'text' nor 'question'")
    label = rec.get("label", rec.get("answer"))
    out["label"] = str(label).strip().lower() if label is not None else None
    if "category" in rec:
        out["category"] = rec["category"]
    return out


def label_files(path: str | Path) -> dict[str, Path]:
    """``{split: file}`` for a label file or a folder of ``*_pope_<split>.json(l)`` files."""
    p = Path(path)
    if p.is_file():
        return {split_of(p): p}
    if p.is_dir():
        files = [f for f in sorted(p.glob("*_pope_*.json*")) if not f.name.startswith("llava_pope")]
        if files:
            return {split_of(f): f for f in files}
        raise TaskError(f"{p} holds no *_pope_<split>.json label files")
    raise TaskError(f"POPE questions not found: {p}")


def load_labels(path: str | Path) -> dict[str, list[dict]]:
    """``{split: records}`` with normalised records (``question_id``, ``image``, ``text``, ``label``)."""
    out = {}
    for split, f in label_files(path).items():
        out[split] = [normalise_record(r, f"{f}:{i + 1}") for i, r in enumerate(read_records(f))]
    return out


def is_combined(records: list[dict]) -> bool:
    """LLaVA's combined question file: a ``category`` on every record."""
    return bool(records) and all("category" in r for r in records)


def load_questions(path: str | Path, labels: str | Path | None = None) -> dict[str, list[dict]]:
    """``{split: records}`` from label files, or from a combined file (labels from its own records or, paired in
    order within each category, from the ``labels`` folder)."""
    p = Path(path)
    if p.is_file():
        raw = read_records(p)
        if is_combined(raw):
            recs = [normalise_record(r, f"{p}:{i + 1}") for i, r in enumerate(raw)]
            by_cat: dict[str, list[dict]] = {}
            for r in recs:
                by_cat.setdefault(str(r["category"]), []).append(r)
            if labels is not None:
                lab = load_labels(labels)
                for cat, rs in by_cat.items():
                    if cat not in lab:
                        raise TaskError(f"{p}: category '{cat}' has no label file in {labels}")
                    if len(lab[cat]) != len(rs):
                        raise TaskError(f"{p}: {len(rs)} '{cat}' questions but {len(lab[cat])} labels in "
                                        f"{label_files(labels)[cat]} (POPE version mismatch?)")
                    for r, l in zip(rs, lab[cat]):
                        r["label"] = l["label"]
            return by_cat
    return load_labels(p)


def version_of(questions: dict[str, list[dict]]) -> str:
    """``llava15`` when the random split has the 2910 questions of POPE ``e3e3926``, else ``current``."""
    return "llava15" if len(questions.get("random", ())) == 2910 else "current"


def strip_prompt(text: str) -> str:
    """The POPE question without a known prompt suffix (LLaVA's combined file carries one)."""
    for suffix in PROMPTS.values():
        if suffix and text.endswith(suffix):
            return text[: -len(suffix)]
    return text


@register_task("pope")
class Pope(Task):
    """POPE questions with labels; scored per split (accuracy, precision, recall, F1, yes-ratio, counts) plus the
    unweighted mean F1 over splits in ``"all"``."""

    name = "pope"
    max_new_tokens = 8
    metrics = (MetricInfo("accuracy", True), MetricInfo("precision", True), MetricInfo("recall", True),
               MetricInfo("f1", True), MetricInfo("yes_ratio", None), MetricInfo("mean_f1", True),
               *(MetricInfo(c, None) for c in ("tp", "fp", "tn", "fn", "n")))

    def __init__(self, path: str, image_root: str = ".", prompt: str = "llava", parser: str = "pope",
                 splits: str | list[str] = "", labels: str | None = None, max_new_tokens: int = 8):
        if parser not in PARSERS:
            raise TaskError(f"unknown POPE parser '{parser}'; known: {', '.join(PARSERS)}")
        self.path, self.image_root, self.parser, self.labels = path, Path(image_root), parser, labels
        self.suffix = PROMPTS.get(prompt, prompt)
        self.splits = [s for s in splits.split(",") if s] if isinstance(splits, str) else list(splits)
        self.max_new_tokens = int(max_new_tokens)
        self.version: str | None = None

    def samples(self) -> list[Sample]:
        questions = load_questions(self.path, self.labels)
        self.version = version_of(questions)
        self.files = _describe_files(self.path, self.labels)
        unknown = [s for s in self.splits if s not in questions]
        if unknown:
            raise TaskError(f"POPE splits {unknown} not in {self.path}; available: {', '.join(sorted(questions))}")
        out = []
        for split, recs in sorted(questions.items()):
            if self.splits and split not in self.splits:
                continue
            for r in recs:
                if r["label"] not in ("yes", "no"):
                    raise TaskError(f"{self.path}: question {r['question_id']} ({split}) has no yes/no label; "
                                    f"for LLaVA's combined file pass labels=<folder of coco_pope_*.json>")
                out.append(Sample(id=f"{split}-{r['question_id']}", question=strip_prompt(r["text"]) + self.suffix,
                                  image=str(self.image_root / r["image"]), answer=r["label"], split=split,
                                  meta={"question_id": r["question_id"], "image": r["image"],
                                        "pope_version": self.version}))
        if not out:
            raise TaskError(f"no POPE questions selected from {self.path}")
        return out

    def parse(self, sample: Sample, text: str) -> str:
        return parse_yes_no(text, self.parser, label=sample.answer)

    def record(self) -> dict:
        """Dataset (coco / aokvqa / gqa), COCO file version and per-split file hashes (:mod:`.pope_versions`)."""
        return {"parser": self.parser, "pope_files": getattr(self, "files", None)}

    def score(self, records) -> dict[str, dict[str, float]]:
        return score_splits([(r["split"], r["answer"], r["parsed"]) for r in records])


def _describe_files(path, labels) -> dict | None:
    from hallufix.tasks.pope_versions import describe

    p = Path(path)
    if p.is_file() and labels is not None and is_combined(read_records(p)):
        p = Path(labels)
    try:
        return describe(label_files(p))
    except TaskError:
        return None


def _split_by_offset(qid: int) -> tuple[str, int]:
    for split, off in sorted(LLAVA_SPLIT_OFFSETS.items(), key=lambda kv: -kv[1]):
        if qid > off:
            return split, qid - off
    raise TaskError(f"question_id {qid} is not in LLaVA's numbering")


def join_answers(labels: dict[str, list[dict]], answers: list[dict], questions: list[dict] | None = None,
                 where: str = "answers") -> dict[str, list[tuple[str, str]]]:
    """Pair answers (``question_id`` + ``text``) with labels; returns ``{split: [(label, answer text)]}`` in label
    order.

    The split of an answer comes from, in order: its own ``category``; LLaVA's combined question file
    (``questions``, question id -> category); LLaVA's id offsets (random 10000001.., popular 20000001..,
    adversarial 1..) when any id exceeds 10^7; else the single label file. Within a split answers join on the
    label file's question id (LLaVA's ids minus the offset); every labelled question of a split that has answers
    must be answered once.
    """
    cat = {q["question_id"]: q["category"] for q in questions} if questions else {}
    llava_ids = any(int(a.get("question_id", 0)) > 10_000_000 for a in answers)
    per: dict[str, dict[int, str]] = {}
    for i, a in enumerate(answers, 1):
        if "question_id" not in a or "text" not in a:
            raise TaskError(f"{where}: answer {i} lacks 'question_id' or 'text'")
        qid = a["question_id"]
        if "category" in a:
            split, local = a["category"], qid - LLAVA_SPLIT_OFFSETS.get(a["category"], 0) if llava_ids else qid
        elif cat:
            if qid not in cat:
                raise TaskError(f"{where}: answer question_id {qid} is not in the question file")
            split = cat[qid]
            local = qid - LLAVA_SPLIT_OFFSETS.get(split, 0) if llava_ids else qid
        elif llava_ids:
            split, local = _split_by_offset(int(qid))
        elif len(labels) == 1:
            split, local = next(iter(labels)), qid
        else:
            raise TaskError(f"{where}: several label files ({', '.join(sorted(labels))}) but the answers carry no "
                            f"category; pass LLaVA's question file too or score one split at a time")
        if split not in labels:
            raise TaskError(f"{where}: answers for split '{split}' but no label file for it")
        if local in per.setdefault(split, {}):
            raise TaskError(f"{where}: question_id {qid} answered twice")
        per[split][local] = a["text"]
    out = {}
    for split, texts in per.items():
        ids = [r["question_id"] for r in labels[split]]
        extra = sorted(set(texts) - set(ids))
        if extra:
            raise TaskError(f"{where}: split {split}: answers for unknown question ids {extra[:5]}")
        missing = [q for q in ids if q not in texts]
        if missing:
            raise TaskError(f"{where}: split {split}: {len(missing)} of {len(ids)} questions unanswered "
                            f"(first ids {missing[:5]}); POPE version mismatch?")
        out[split] = [(r["label"], texts[r["question_id"]]) for r in labels[split]]
    return dict(sorted(out.items()))
