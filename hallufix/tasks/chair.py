"""CHAIR on COCO: captions of COCO val2014 images scored against object ground truth (``benchmarks.md`` §2).

``--task chair:GT`` where GT is a prebuilt ``{image_id: [objects]}`` JSON(.gz) table or a folder holding COCO 2014
``instances_*2014.json`` and ``captions_*2014.json`` (train + val, as every implementation does: objects from the
instance annotations through the synonym table, plus the objects the human captions mention). Images come from
``task.image_root`` as ``COCO_val2014_<id:012d>.jpg``; ``task.images`` limits the evaluated ids (a file with one
id per line; default: ``task.n`` ids drawn with ``task.seed``). Prompt and generation budget follow the papers:
"Please describe this image in detail." with ``max_new_tokens`` 512 (the 64-token setting is ``task.max_new_tokens=64``).
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from hallufix.scoring.chair import ChairScorer, coco_double_words, read_synonyms
from hallufix.tasks.base import MetricInfo, Sample, Task, TaskError, register_task

from hallufix.scoring.chair import coco_synonyms_path as _syn
SYNONYMS = _syn()


def load_gt_table(path: Path) -> dict[int, set[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        raw = json.load(f)
    return {int(k): set(v) for k, v in raw.items()}


def build_gt_from_coco(folder: Path, scorer: ChairScorer) -> dict[int, set[str]]:
    """Objects per image from COCO instances (category names through the synonym table) and captions."""
    gt: dict[int, set[str]] = {}
    inst = sorted(folder.glob("instances_*2014.json"))
    caps = sorted(folder.glob("captions_*2014.json"))
    if not inst or not caps:
        raise TaskError(f"{folder} needs COCO 2014 instances_*2014.json and captions_*2014.json files")
    for f in inst:
        data = json.loads(f.read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        for a in data["annotations"]:
            name = names[a["category_id"]]
            gt.setdefault(a["image_id"], set()).add(scorer.synonyms.get(name, name))
    for f in caps:
        for a in json.loads(f.read_text())["annotations"]:
            gt.setdefault(a["image_id"], set()).update(scorer.mentions(a["caption"])[1])
    return gt


@register_task("chair")
class Chair(Task):
    name = "chair"
    metrics = (MetricInfo("chair_s", False), MetricInfo("chair_i", False), MetricInfo("recall", True),
               MetricInfo("length", None))

    def __init__(self, path: str, image_root: str = ".", prompt: str = "Please describe this image in detail.",
                 max_new_tokens: int = 512, n: int = 500, seed: int = 42, images: str = "",
                 normaliser: str = "identity"):
        self.path, self.image_root, self.prompt = Path(path), Path(image_root), prompt
        self.max_new_tokens, self.n, self.seed, self.images_file = int(max_new_tokens), int(n), int(seed), images
        self.scorer = ChairScorer(read_synonyms(SYNONYMS), coco_double_words(), normaliser=normaliser)
        self._gt = None

    @property
    def gt(self) -> dict[int, set[str]]:
        if self._gt is None:
            if self.path.is_file():
                self._gt = load_gt_table(self.path)
            elif self.path.is_dir():
                self._gt = build_gt_from_coco(self.path, self.scorer)
            else:
                raise TaskError(f"CHAIR ground truth not found: {self.path}")
        return self._gt

    def samples(self):
        if self.images_file:
            ids = [int(x) for x in Path(self.images_file).read_text().split()]
        else:
            ids = sorted(self.gt)
            random.Random(self.seed).shuffle(ids)
            ids = sorted(ids[: self.n])
        return [Sample(id=str(i), question=self.prompt, image=str(self.image_root / f"COCO_val2014_{i:012d}.jpg"),
                       meta={"image_id": i}) for i in ids]

    def parse(self, sample, text):
        return text

    def score(self, records):
        res = self.scorer.score([(r["meta"]["image_id"], r["parsed"]) for r in records], self.gt)
        return {"all": {k: res[k] for k in ("chair_s", "chair_i", "recall", "length")}}
