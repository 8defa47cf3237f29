"""The synthetic tasks: fixed seeded sets (disjoint from training), negatives of the right kind, and scoring through
the real POPE / CHAIR / MME scorers."""
from __future__ import annotations

import pytest

from hallufix.builtin.train import TRAIN_SEED_OFFSET
from hallufix.builtin.world import CLASSES, PARTNERS, sample_scene
from hallufix.tasks import get_task


@pytest.fixture(scope="module")
def pope_samples():
    return get_task("shapes-pope").samples()


def _records(samples, answer_fn):
    return [{"id": s.id, "split": s.split, "answer": s.answer, "parsed": answer_fn(s), "output": answer_fn(s),
             "meta": s.meta} for s in samples]


def test_pope_set_is_fixed_balanced_and_disjoint_from_training(pope_samples):
    again = get_task("shapes-pope").samples()
    assert [(s.id, s.question, s.answer, s.meta) for s in pope_samples] == \
           [(s.id, s.question, s.answer, s.meta) for s in again]
    assert len(pope_samples) == 900 and len({s.id for s in pope_samples}) == 900
    for split in ("random", "popular", "adversarial"):
        rows = [s for s in pope_samples if s.split == split]
        assert sum(s.answer == "yes" for s in rows) == sum(s.answer == "no" for s in rows) == 150
    assert all(s.meta["scene"] < TRAIN_SEED_OFFSET for s in pope_samples)
    img = pope_samples[0].load_image()
    assert img.size == (64, 64)


def test_pope_negatives_are_of_their_kind(pope_samples):
    import random

    neg = {}
    for s in pope_samples:
        scene = sample_scene(random.Random(s.meta["scene"]))
        if s.answer == "yes":
            assert s.meta["class"] in scene.classes
            continue
        assert s.meta["class"] not in scene.classes
        is_partner = any(PARTNERS.get(p) == s.meta["class"] for p in scene.classes)
        assert s.meta["negative"] == ("partner" if is_partner else "other")
        neg.setdefault(s.split, {})[s.meta["scene"]] = s.meta["class"]
    assert all(s.meta["negative"] == "partner" for s in pope_samples if s.split == "adversarial" and s.answer == "no")
    pop, adv = neg["popular"], neg["adversarial"]
    assert sum(pop[k] == adv[k] for k in pop) / len(pop) < 0.05  # popular and adversarial measure different things
    assert len(set(neg["random"].values())) >= len(CLASSES) - 2


def test_pope_scores_through_the_pope_scorer(pope_samples):
    task = get_task("shapes-pope")
    # a model that says yes exactly to present classes and absent partners
    records = _records(pope_samples, lambda s: "yes" if s.answer == "yes" or s.meta["negative"] == "partner"
                       else "No.")
    assert task.parse(pope_samples[0], "No, there is not.") == "no" and task.parse(pope_samples[0], "yes") == "yes"
    res = task.score([{**r, "parsed": task.parse(None, r["output"])} for r in records])
    assert res["all"]["fp_rate_partner"] == 1.0 and res["all"]["fp_rate_other"] == 0.0
    assert res["adversarial"]["accuracy"] == 0.5 and res["adversarial"]["yes_ratio"] == 1.0
    assert res["random"]["accuracy"] > res["adversarial"]["accuracy"]
    assert set(res["random"]) >= {"accuracy", "precision", "recall", "f1", "yes_ratio", "tp", "fp", "tn", "fn", "n"}


def test_chair_set_and_scores():
    task = get_task("shapes-chair")
    samples = task.samples()
    assert len(samples) == 150 and [s.meta for s in samples] == [s.meta for s in task.samples()]
    perfect = _records(samples, lambda s: " and ".join(f"a {c}" for c in s.meta["objects"]) + " .")
    res = task.score(perfect)["all"]
    assert res["chair_s"] == 0.0 and res["chair_i"] == 0.0 and res["recall"] == 100.0

    def one_extra(s):
        extra = next(c for c in CLASSES if c not in s.meta["objects"])
        return f"a {s.meta['objects'][0]} and a {extra} ."

    res = task.score(_records(samples, one_extra))["all"]
    assert res["chair_s"] == 100.0 and res["chair_i"] == 50.0


def test_mme_pairs_and_scores():
    task = get_task("shapes-mme")
    samples = task.samples()
    assert len(samples) == 4 * 40 * 2
    assert {s.split for s in samples} == {"existence", "count", "position", "color"}
    for a, b in zip(samples[::2], samples[1::2]):  # consecutive yes/no pair about one image
        assert a.meta["scene"] == b.meta["scene"] and (a.answer, b.answer) == ("yes", "no")
    assert task.score(_records(samples, lambda s: s.answer))["all"]["hallucination"] == 800.0
    res = task.score(_records(samples, lambda s: "yes"))
    assert res["existence"]["acc"] == 50.0 and res["existence"]["acc_plus"] == 0.0
