"""AMBER from its official files: ``--task amber-disc:PATH``, ``amber-gen:PATH`` or ``amber:PATH`` (both).

``PATH`` is AMBER's ``data/`` folder (``annotations.json``, ``query/query_*.json``, ``relation.json``,
``safe_words.txt``) or one of its query files (``annotations=`` points at ``annotations.json`` when it is not in
the query file's folder or the one above). Images: ``image_root=`` the folder of ``AMBER_<n>.jpg``.

Options: ``dimensions`` (discriminative subset: ``existence,attribute,relation``), ``response`` (how a generated
text becomes the response the official rule compares exactly with ``Yes``/``No``: ``first-word``, the default — the
first word without trailing punctuation, ``yes``/``no`` in any case mapped to ``Yes``/``No``, anything else kept
and scored wrong; ``exact`` — the stripped text itself), ``similarity`` (``auto``: spaCy's vectors when installed;
``off``), ``max_new_tokens`` (8 for ``amber-disc``, else 512).

Splits: discriminative records are in ``existence`` / ``attribute`` / ``relation`` and are also scored in
``overall`` and their sub-block (``state``, ``number``, ``action``) through ``meta["answers"]``; generative records
are in ``generative``. ``all`` holds ``amber_score`` when both parts were run.
"""
from __future__ import annotations

import json
from pathlib import Path

from hallufix.scoring.amber import DIMENSIONS, amber_score, dimension_of, discriminative, load_annotations
from hallufix.tasks.base import MetricInfo, Sample, Task, TaskError, read_json, register_task

QUERY = {"disc": "query_discriminative.json", "gen": "query_generative.json", "all": "query_all.json"}
RESPONSES = ("first-word", "exact")


def normalise_response(text: str, rule: str = "first-word") -> str:
    """The response AMBER's exact rule reads: ``Yes``/``No`` or the (stripped) text (see the module docstring)."""
    t = text.strip()
    if rule == "exact":
        return t
    first = t.split()[0].rstrip(".,!;:") if t.split() else ""
    return {"yes": "Yes", "no": "No"}.get(first.lower(), t)


def resolve(path: str | Path, kind: str, annotations: str | None) -> tuple[Path, Path, Path]:
    """``(query file, annotations.json, data folder)``; :class:`TaskError` naming what is missing."""
    p = Path(path)
    if p.is_dir():
        query = p / "query" / QUERY[kind]
        if not query.is_file():
            query = p / QUERY[kind]
    else:
        query = p
    if not query.is_file():
        raise TaskError(f"AMBER query file not found: {query} (give AMBER's data/ folder or a query/query_*.json)")
    if annotations:
        ann = Path(annotations)
    else:
        ann = next((d / "annotations.json" for d in (query.parent, query.parent.parent)
                    if (d / "annotations.json").is_file()), query.parent / "annotations.json")
    if not ann.is_file():
        raise TaskError(f"AMBER annotations.json not found beside {query}; pass task.annotations=FILE")
    return query, ann, ann.parent


class Amber(Task):
    kind = "all"
    metrics = (MetricInfo("accuracy", True), MetricInfo("precision", True), MetricInfo("recall", True),
               MetricInfo("f1", True), MetricInfo("chair", False), MetricInfo("cover", True),
               MetricInfo("hal", False), MetricInfo("cog", False), MetricInfo("amber_score", True),
               MetricInfo("n", None))

    def __init__(self, path: str, image_root: str = ".", annotations: str | None = None, dimensions: str = "",
                 response: str = "first-word", similarity: str = "auto", max_new_tokens: int | None = None):
        if response not in RESPONSES:
            raise TaskError(f"unknown AMBER response rule '{response}'; known: {', '.join(RESPONSES)}")
        if similarity not in ("auto", "off"):
            raise TaskError(f"task.similarity must be auto or off, not '{similarity}'")
        self.dims = [d for d in str(dimensions).split(",") if d]
        bad = [d for d in self.dims if d not in DIMENSIONS]
        if bad:
            raise TaskError(f"unknown AMBER dimensions {bad}; known: {', '.join(DIMENSIONS)}")
        self.query, self.annotations, self.data = resolve(path, self.kind, annotations)
        self.image_root, self.response, self.similarity = Path(image_root), response, similarity
        self.max_new_tokens = int(max_new_tokens or (8 if self.kind == "disc" else 512))
        self._anns: list[dict] | None = None
        self._gen = None

    def anns(self) -> list[dict]:
        if self._anns is None:
            try:
                self._anns = load_annotations(self.annotations)
            except (ValueError, json.JSONDecodeError) as exc:
                raise TaskError(f"{self.annotations}: {exc}") from None
        return self._anns

    def samples(self) -> list[Sample]:
        anns = self.anns()
        queries = read_json(self.query, "AMBER query file")
        out = []
        for i, q in enumerate(queries, 1):
            if not isinstance(q, dict) or not {"id", "image", "query"} <= set(q):
                raise TaskError(f"{self.query}: item {i} lacks id, image or query")
            if not 1 <= int(q["id"]) <= len(anns):
                raise TaskError(f"{self.query}: id {q['id']} is not in {self.annotations} (1..{len(anns)})")
            ann = anns[int(q["id"]) - 1]
            generative = ann["type"] == "generative"
            if (generative and self.kind == "disc") or (not generative and self.kind == "gen"):
                continue
            meta = {"amber_id": int(q["id"]), "type": ann["type"], "image": q["image"]}
            if generative:
                split, answer = "generative", None
            else:
                split, sub = dimension_of(ann["type"])
                if self.dims and split not in self.dims:
                    continue
                answer = ann["truth"]
                meta["answers"] = {"overall": answer, **({sub: answer} if sub else {})}
            out.append(Sample(id=str(q["id"]), question=q["query"], image=str(self.image_root / q["image"]),
                              answer=answer, split=split, meta=meta))
        if not out:
            raise TaskError(f"no AMBER {self.kind} questions selected from {self.query}")
        return out

    def parse(self, sample: Sample, text: str) -> str:
        return text if sample.split == "generative" else normalise_response(text, self.response)

    def generative_scorer(self):
        from hallufix.scoring.amber_generative import GenerativeScorer

        if self._gen is None:
            try:
                self._gen = GenerativeScorer.from_folder(self.data, **({"similarity": None}
                                                                       if self.similarity == "off" else {}))
            except (OSError, json.JSONDecodeError) as exc:
                raise TaskError(f"AMBER generative scoring needs relation.json and safe_words.txt in {self.data} "
                                f"({exc})") from None
        return self._gen

    def score(self, records) -> dict[str, dict]:
        return score_records(records, self.anns(), self.generative_scorer)

    def record(self) -> dict:
        return {"query_file": str(self.query), "response_rule": self.response,
                "similarity": self._gen.similarity_source if self._gen else None}


def score_records(records, anns: list[dict], generative_scorer) -> dict[str, dict]:
    """Records (``meta.amber_id``, ``parsed`` = response) -> AMBER blocks, ``generative`` and ``all``."""
    disc = [(anns[r["meta"]["amber_id"] - 1]["type"], anns[r["meta"]["amber_id"] - 1]["truth"], r["parsed"])
            for r in records if r["split"] != "generative"]
    gen = [(anns[r["meta"]["amber_id"] - 1], r["parsed"]) for r in records if r["split"] == "generative"]
    out: dict[str, dict] = dict(discriminative(disc)) if disc else {}
    if gen:
        g = generative_scorer().score(gen)
        out["generative"] = {k: g[k] for k in ("chair", "cover", "hal", "cog", "n")}
    if "overall" in out and "generative" in out:
        out["all"] = {"amber_score": amber_score(out["generative"]["chair"], out["overall"]["f1"])}
    return out


@register_task("amber")
class AmberAll(Amber):
    """AMBER's generative and discriminative queries (``query_all.json``)."""

    name, kind = "amber", "all"


@register_task("amber-disc")
class AmberDiscriminative(Amber):
    """AMBER's discriminative queries (existence, attribute, relation)."""

    name, kind = "amber-disc", "disc"


@register_task("amber-gen")
class AmberGenerative(Amber):
    """AMBER's generative queries ("Describe this image.")."""

    name, kind = "amber-gen", "gen"
