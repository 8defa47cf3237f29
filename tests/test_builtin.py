"""The built-in default: world statistics, the shipped model, the synthetic tasks, and the training script."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from hallufix.builtin import BUILTIN_MODEL_DIR, builtin_model_available
from hallufix.builtin.world import CLASSES, PARTNERS, RANKING, render, sample_scene

QUESTIONS = Path(__file__).parent / "data" / "builtin_questions.jsonl"
shipped = pytest.mark.skipif(not builtin_model_available(), reason=f"no shipped weights in {BUILTIN_MODEL_DIR}")


def test_world_is_deterministic_and_has_hallucination_pressure():
    a = [sample_scene(random.Random(i)) for i in range(3)]
    b = [sample_scene(random.Random(i)) for i in range(3)]
    assert a == b and list(render(a[0]).getdata()) == list(render(b[0]).getdata())
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(3000)]
    freq = Counter(c for s in scenes for c in s.classes)
    assert freq[RANKING[0]] > 2 * freq[RANKING[-1]]  # popular classes
    for cls, partner in PARTNERS.items():
        with_cls = [s for s in scenes if cls in s.classes]
        together = sum(partner in s.classes for s in with_cls) / len(with_cls)
        base = freq[partner] / len(scenes)
        assert together > 1.8 * base, (cls, partner)  # co-occurrence well above the partner's base rate
    assert RANKING[0] not in PARTNERS and RANKING[1] not in PARTNERS
    assert all(1 <= len(s.objects) <= 4 for s in scenes)


def test_synthetic_tasks_are_fixed_and_use_the_real_scorers():
    from hallufix.tasks import get_task

    pope = get_task("shapes-pope")
    s1, s2 = pope.samples(), pope.samples()
    assert [x.id for x in s1] == [x.id for x in s2] and len(s1) == 900
    negatives = {x.split: [] for x in s1}
    for x in s1:
        if x.answer == "no":
            negatives[x.split].append((x.meta["scene"], x.meta["class"]))
    pop, adv = dict(negatives["popular"]), dict(negatives["adversarial"])
    assert sum(pop[k] == adv[k] for k in pop) / len(pop) < 0.05  # popular and adversarial negatives differ
    assert all(x.meta["negative"] == "partner" for x in s1 if x.split == "adversarial" and x.answer == "no")
    recs = [{"id": x.id, "split": x.split, "answer": x.answer, "parsed": "yes", "meta": x.meta} for x in s1]
    res = pope.score(recs)
    assert res["random"]["yes_ratio"] == 1.0 and res["all"]["fp_rate_partner"] == 1.0
    mme = get_task("shapes-mme")
    recs = [{"id": x.id, "split": x.split, "answer": x.answer, "parsed": x.answer, "meta": x.meta}
            for x in mme.samples()]
    assert mme.score(recs)["all"]["hallucination"] == 800.0
    chair = get_task("shapes-chair")
    recs = [{"id": x.id, "parsed": " and ".join(f"a {c}" for c in x.meta["objects"]), "meta": x.meta}
            for x in chair.samples()]
    res = chair.score(recs)["all"]
    assert res["chair_s"] == 0.0 and res["recall"] == 100.0


def test_every_question_and_answer_is_in_the_vocabulary():
    from hallufix.builtin.language import build_tokenizer, training_turns

    tok = build_tokenizer()
    rng = random.Random(1)
    for _ in range(200):
        scene = sample_scene(rng)
        for qa in training_turns(scene, rng, 6):
            for text in (qa.question, qa.answer):
                assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"], text


def test_training_script_smoke_and_determinism(tmp_path):
    from hallufix.builtin.train import train

    kw = dict(seed=3, threads=1, batch=4, turns=2, log_every=1, save_every=0, eval_every=0, progress=False)
    a = train(3, output=tmp_path / "a", **kw)
    b = train(3, output=tmp_path / "b", **kw)
    assert a["losses"] == b["losses"] and len(a["losses"]) == 3
    from transformers import AutoModelForImageTextToText, AutoProcessor

    AutoProcessor.from_pretrained(tmp_path / "a")
    AutoModelForImageTextToText.from_pretrained(tmp_path / "a")


@shipped
def test_shipped_model_answers_the_fixed_questions():
    from hallufix.api import Session

    s = Session.load("builtin")
    assert s.info.num_layers >= 8 and s.info.grid == (8, 8)
    rows = [json.loads(l) for l in QUESTIONS.read_text().splitlines() if l.strip()]
    images = [render(sample_scene(random.Random(r["scene_seed"]))) for r in rows]
    outs = s.start([]).generate(images, [r["question"] for r in rows], max_new_tokens=2)
    acc = sum(o.text.split()[0] == r["answer"] for o, r in zip(outs, rows) if o.text) / len(rows)
    assert acc >= 0.85, acc
    rec = json.loads((BUILTIN_MODEL_DIR / "training.json").read_text())
    assert rec["completed_steps"] == rec["steps"] and rec["git_commit"]
