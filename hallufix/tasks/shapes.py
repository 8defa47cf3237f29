"""Synthetic tasks over the built-in shapes world, mirroring POPE, CHAIR and MME and scored by the same scorers.

Fixed, seeded evaluation sets (scene seeds below the training stream's offset, so never seen in training):

* ``shapes-pope``: ``n_images`` scenes that have at least one absent co-occurrence partner (so every split has a
  negative of its kind); per scene one yes question (a present class, the same in every split) and one no question
  per split: ``random`` (a uniformly drawn absent class), ``popular`` (the most frequent absent class in the
  world), ``adversarial`` (an absent partner of a present class: the highest co-occurrence lift). Diagnostics: the false-positive rate on absent *partners* vs other absent
  classes (``fp_rate_partner``, ``fp_rate_other``, across all splits).
* ``shapes-chair``: ``describe the image .`` captions scored with CHAIR over the world's vocabulary.
* ``shapes-mme``: existence / count / position / color subtasks, two questions per image (one yes, one no),
  scored with MME's acc / acc+ / score.
"""
from __future__ import annotations

import itertools
import random
from collections import Counter
from functools import lru_cache

from hallufix.builtin.language import caption_question, colour_question, count_question, exist_question, \
    position_question, COLOUR_NAMES
from hallufix.builtin.world import CLASSES, PARTNERS, render, sample_scene
from hallufix.scoring.chair import ChairScorer, chair_units
from hallufix.scoring.mme import HALLUCINATION, mme_scores, subtask_score, total_metrics
from hallufix.scoring.pope import parse_yes_no, pope_metrics
from hallufix.tasks.base import MetricInfo, Sample, Task, register_task

EVAL_SEED_BASE = {"pope": 10_000, "chair": 20_000, "mme": 30_000}


def _scene(seed: int):
    return sample_scene(random.Random(seed))


def _image(seed: int):
    return lambda: render(_scene(seed))


@lru_cache(maxsize=1)
def world_statistics(n: int = 20000, seed: int = 99) -> tuple[Counter, Counter]:
    """Class frequencies and ordered co-occurrence counts over ``n`` sampled scenes (deterministic)."""
    rng = random.Random(seed)
    freq, co = Counter(), Counter()
    for _ in range(n):
        classes = sample_scene(rng).classes
        freq.update(classes)
        co.update(itertools.permutations(classes, 2))
    return freq, co


def _lift(present: str, cls: str) -> float:
    freq, co = world_statistics()
    n = 20000
    return (co[(present, cls)] / max(1, freq[present])) / max(1e-9, freq[cls] / n)


class _YesNo(Task):
    parser = "pope"
    max_new_tokens = 3

    def parse(self, sample, text):
        return parse_yes_no(text, self.parser)


@register_task("shapes-pope")
class ShapesPope(_YesNo):
    """POPE-style existence questions over the shapes world (random / popular / adversarial splits)."""

    name = "shapes-pope"
    metrics = (MetricInfo("accuracy", True), MetricInfo("precision", True), MetricInfo("recall", True),
               MetricInfo("f1", True), MetricInfo("yes_ratio", None), MetricInfo("mean_f1", True),
               MetricInfo("fp_rate_partner", False), MetricInfo("fp_rate_other", False),
               *(MetricInfo(c, None) for c in ("tp", "fp", "tn", "fn", "n")))

    def __init__(self, n_images: int = 150, seed: int = 0, splits: str = "random,popular,adversarial",
                 parser: str = "pope"):
        self.n_images, self.seed, self.parser = int(n_images), int(seed), parser
        self.splits = [s.strip() for s in splits.split(",") if s.strip()]

    def samples(self):
        freq, _ = world_statistics()
        out, sid, i = [], EVAL_SEED_BASE["pope"] + 10_000 * self.seed, 0
        while i < self.n_images:
            sid += 1
            scene = _scene(sid)
            present = sorted(scene.classes)
            absent = [c for c in CLASSES if c not in scene.classes]
            if not any(PARTNERS.get(p) in absent for p in present):
                continue
            rng = random.Random(sid)
            pos = rng.choice(present)
            negatives = {"random": rng.choice(absent),
                         "popular": max(absent, key=lambda c: (freq[c], c)),
                         "adversarial": max(absent, key=lambda c: (max(_lift(p, c) for p in present), c))}
            for split in self.splits:
                for cls, answer in ((pos, "yes"), (negatives[split], "no")):
                    partner = answer == "no" and any(PARTNERS.get(p) == cls for p in present)
                    out.append(Sample(id=f"{split}-{i}-{answer}", question=exist_question(cls), image=_image(sid),
                                      answer=answer, split=split,
                                      meta={"scene": sid, "class": cls, "negative": "partner" if partner else
                                            ("other" if answer == "no" else None)}))
            i += 1
        return out

    def score(self, records):
        out = {}
        for split in self.splits:
            rs = [r for r in records if r["split"] == split]
            if rs:
                out[split] = pope_metrics([r["answer"] for r in rs], [r["parsed"] for r in rs])
        out["all"] = {"mean_f1": sum(m["f1"] for m in out.values()) / max(1, len(out))}
        for kind in ("partner", "other"):
            neg = [r for r in records if (r.get("meta") or {}).get("negative") == kind]
            out["all"][f"fp_rate_{kind}"] = sum(r["parsed"] == "yes" for r in neg) / len(neg) if neg else 0.0
        return out


@register_task("shapes-chair")
class ShapesChair(Task):
    """CHAIR-style captioning over the shapes world's vocabulary."""

    name = "shapes-chair"
    max_new_tokens = 24
    metrics = (MetricInfo("chair_s", False), MetricInfo("chair_i", False), MetricInfo("recall", True),
               MetricInfo("length", None))

    def sample_stats(self, records):
        """Per caption ``{id: {mentions, hallucinated, covered, gt}}`` (counts) for the report's bootstrap."""
        scorer = ChairScorer({c: c for c in CLASSES})
        return chair_units(scorer, [(r["id"], r["parsed"]) for r in records],
                           {r["id"]: set(r["meta"]["objects"]) for r in records})

    def __init__(self, n_images: int = 150, seed: int = 0, max_new_tokens: int = 24):
        self.n_images, self.seed, self.max_new_tokens = int(n_images), int(seed), int(max_new_tokens)

    def samples(self):
        out = []
        for i in range(self.n_images):
            sid = EVAL_SEED_BASE["chair"] + 1000 * self.seed + i
            out.append(Sample(id=f"chair-{i}", question=caption_question(), image=_image(sid), split="all",
                              meta={"scene": sid, "objects": sorted(_scene(sid).classes)}))
        return out

    def parse(self, sample, text):
        return text

    def score(self, records):
        scorer = ChairScorer({c: c for c in CLASSES})
        res = scorer.score([(r["id"], r["parsed"]) for r in records],
                           {r["id"]: set(r["meta"]["objects"]) for r in records})
        return {"all": {k: res[k] for k in ("chair_s", "chair_i", "recall", "length")}}


@register_task("shapes-mme")
class ShapesMME(_YesNo):
    """MME-style pairs (one yes and one no question per image) for existence, count, position and color."""

    name = "shapes-mme"
    max_new_tokens = 3
    metrics = (MetricInfo("acc", True), MetricInfo("acc_plus", True), MetricInfo("score", True),
               MetricInfo("hallucination", True), MetricInfo("object_level", True),
               MetricInfo("attribute_level", True))

    def __init__(self, n_images: int = 40, seed: int = 0):
        self.n_images, self.seed = int(n_images), int(seed)

    def samples(self):
        out = []
        for k, sub in enumerate(HALLUCINATION):
            for i in range(self.n_images):
                sid = EVAL_SEED_BASE["mme"] + 1000 * (4 * self.seed + k) + i
                scene, rng = _scene(sid), random.Random(sid)
                pairs = self._pair(sub, scene, rng)
                for (q, a) in pairs:
                    out.append(Sample(id=f"{sub}-{i}-{a}", question=q, image=_image(sid), answer=a, split=sub,
                                      meta={"scene": sid}))
        return out

    @staticmethod
    def _pair(sub, scene, rng):
        present = sorted(scene.classes)
        if sub == "existence":
            absent = [c for c in CLASSES if c not in scene.classes]
            return [(exist_question(rng.choice(present)), "yes"), (exist_question(rng.choice(absent)), "no")]
        if sub == "count":
            n = len(scene.objects)
            return [(count_question(n), "yes"), (count_question(rng.choice([x for x in range(1, 5) if x != n])), "no")]
        o = scene.get(rng.choice(present))
        if sub == "position":
            other = "right" if o.side == "left" else "left"
            return [(position_question(o.cls, o.side), "yes"), (position_question(o.cls, other), "no")]
        wrong = rng.choice([c for c in COLOUR_NAMES if c != o.colour])
        return [(colour_question(o.cls, o.colour), "yes"), (colour_question(o.cls, wrong), "no")]

    def parse(self, sample, text):
        return text

    def score(self, records):
        by_sub = {}
        for r in records:
            by_sub.setdefault(r["split"], []).append((r["meta"]["scene"], r["answer"].capitalize(), r["parsed"]))
        res = mme_scores(by_sub, expected={sub: 2 * self.n_images for sub in HALLUCINATION})
        out = {name: {k: v for k, v in m.items() if k != "n"} for name, m in res["subtasks"].items()}
        out["all"] = total_metrics(res, ("hallucination", "object_level", "attribute_level"))
        return out


__all__ = ["ShapesPope", "ShapesChair", "ShapesMME", "subtask_score"]
