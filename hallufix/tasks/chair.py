"""CHAIR on COCO: captions of COCO val2014 images scored against object ground truth (``docs/benchmarks.md``, "CHAIR").

``--task chair:GT`` where GT is a prebuilt ``{image_id: [objects]}`` JSON or JSON.gz table, or a folder holding
COCO 2014 ``instances_*2014.json`` and ``captions_*2014.json`` (train + val, as every implementation uses: objects
from the instance annotations through the synonym table, plus the objects the human captions mention under the
chosen normaliser).

Options: ``image_root`` (images as ``COCO_val2014_<id:012d>.jpg``), ``images`` (a file of image ids, one per
line; else ``n`` ids (500) drawn with ``seed`` (42) from the ground-truth ids), ``prompt`` ("Please describe this
image in detail."), ``max_new_tokens`` (512; the papers' short setting is 64), ``normaliser`` (``nltk``, the
OPERA / lmms-eval variant and default — NLTK itself where installed with its data, else offline stand-ins with a
warning; ``nltk-3.8``, with NLTK 3.8's lemmatiser; ``pattern``, the original paper's).
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from hallufix.scoring.chair import ChairScorer
from hallufix.tasks.base import MetricInfo, Sample, Task, TaskError, register_task

DEFAULT_PROMPT = "Please describe this image in detail."


def load_gt_table(path: str | Path) -> dict[int, set[str]]:
    """A prebuilt ``{image_id: [objects]}`` JSON(.gz) table, keys as ints."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise TaskError(f"{path}: not a JSON object table of image ids to objects ({exc})") from None
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: expected a JSON object {{image_id: [objects]}}")
    try:
        return {int(k): set(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise TaskError(f"{path}: keys must be image ids and values lists of object names") from None


def coco_files(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """``(instances files, captions files)`` of COCO 2014 in ``folder`` (or its ``annotations/``)."""
    folder = Path(folder)
    for d in (folder, folder / "annotations"):
        inst, caps = sorted(d.glob("instances_*2014.json")), sorted(d.glob("captions_*2014.json"))
        if inst and caps:
            return inst, caps
    raise TaskError(f"{folder} needs COCO 2014 instances_*2014.json and captions_*2014.json files "
                    f"(train2014 + val2014, from the COCO annotations archive)")


def build_gt_from_coco(folder: str | Path, scorer: ChairScorer) -> dict[int, set[str]]:
    """Objects per image from COCO instance annotations (category names through the vocabulary) and captions."""
    inst_files, cap_files = coco_files(folder)
    instances, captions = [], []
    for f in inst_files:
        data = json.loads(f.read_text(encoding="utf-8"))
        names = {c["id"]: c["name"] for c in data["categories"]}
        instances += [(a["image_id"], names[a["category_id"]]) for a in data["annotations"]]
    for f in cap_files:
        captions += [(a["image_id"], a["caption"]) for a in json.loads(f.read_text(encoding="utf-8"))["annotations"]]
    return scorer.ground_truth(instances, captions)


def load_gt(path: str | Path, scorer: ChairScorer) -> dict[int, set[str]]:
    """A prebuilt table (file) or COCO annotation folder -> ``{image_id: objects}``."""
    p = Path(path)
    if p.is_file():
        return load_gt_table(p)
    if p.is_dir():
        return build_gt_from_coco(p, scorer)
    raise TaskError(f"CHAIR ground truth not found: {p}")


@register_task("chair")
class Chair(Task):
    """Captioning; scored with CHAIR_s, CHAIR_i, recall (percent, x100) and length (tokens) in ``"all"``."""

    name = "chair"
    metrics = (MetricInfo("chair_s", False), MetricInfo("chair_i", False), MetricInfo("recall", True),
               MetricInfo("length", None), MetricInfo("n", None))

    def __init__(self, path: str, image_root: str = ".", prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 512,
                 n: int = 500, seed: int = 42, images: str = "", normaliser: str = "nltk"):
        self.path, self.image_root, self.prompt = Path(path), Path(image_root), prompt
        self.max_new_tokens, self.n, self.seed, self.images_file = int(max_new_tokens), int(n), int(seed), images
        try:
            self.scorer = ChairScorer.coco(normaliser)
        except ValueError as exc:
            raise TaskError(str(exc)) from None
        self._gt: dict[int, set[str]] | None = None

    @property
    def gt(self) -> dict[int, set[str]]:
        if self._gt is None:
            self._gt = load_gt(self.path, self.scorer)
        return self._gt

    def image_ids(self) -> list[int]:
        if self.images_file:
            f = Path(self.images_file)
            if not f.is_file():
                raise TaskError(f"CHAIR image id list not found: {f}")
            try:
                return [int(x) for x in f.read_text().split()]
            except ValueError:
                raise TaskError(f"{f}: expected integer COCO image ids, one per line") from None
        ids = sorted(self.gt)
        random.Random(self.seed).shuffle(ids)
        return sorted(ids[: self.n])

    def samples(self) -> list[Sample]:
        ids = self.image_ids()
        if not ids:
            raise TaskError(f"no CHAIR images selected from {self.path}")
        return [Sample(id=str(i), question=self.prompt, image=str(self.image_root / f"COCO_val2014_{i:012d}.jpg"),
                       meta={"image_id": i}) for i in ids]

    def parse(self, sample: Sample, text: str) -> str:
        return text

    def sample_stats(self, records) -> dict[str, dict[str, int]]:
        """Per caption counts for the report's bootstrap (:func:`hallufix.scoring.chair.chair_units`)."""
        from hallufix.scoring.chair import chair_units

        return chair_units(self.scorer, [(int(r["meta"]["image_id"]), r["parsed"]) for r in records], self.gt,
                           keys=[r["id"] for r in records])

    def score(self, records) -> dict[str, dict[str, float]]:
        res = self.scorer.score([(int(r["meta"]["image_id"]), r["parsed"]) for r in records], self.gt)
        return {"all": {k: res[k] for k in ("chair_s", "chair_i", "recall", "length", "n")}}
