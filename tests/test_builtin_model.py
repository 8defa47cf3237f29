"""The shipped weights: load through AutoModel / AutoProcessor offline and answer the fixed question file in a
batched, left-padded generate; the folder records how it was trained and evaluated."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from hallufix.builtin import BUILTIN_MODEL_DIR, builtin_model_available
from hallufix.builtin.questions import fixed_questions
from hallufix.builtin.world import render, sample_scene

QUESTIONS = Path(__file__).parent / "data" / "builtin_questions.jsonl"
#: per-kind floors on this file, below what the shipped model scores on it (existence 20/20, open colour 5/5); a
#: broken load, template or padding scores about 0.5 on existence and 0 on the open colour question. The yes/no
#: colour, count and position kinds have 5 questions each (4/5, 5/5, 3/5 now): too few for a floor above chance.
MIN_ACCURACY = {"exist": 0.9, "what-colour": 0.8}
shipped = pytest.mark.skipif(not builtin_model_available(), reason=f"no shipped weights in {BUILTIN_MODEL_DIR}")


def test_question_file_is_the_generated_one():
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    assert rows == fixed_questions()
    assert len(rows) == 40 and {r["kind"] for r in rows} >= {"exist", "colour", "count", "position"}


@pytest.fixture(scope="module")
def loaded():
    from hallufix.builtin.evaluate import load

    return load(BUILTIN_MODEL_DIR)


@shipped
def test_shipped_folder_loads_through_the_auto_classes(loaded):
    model, processor = loaded
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.text_config.num_hidden_layers >= 8 and model.config.image_seq_length == 64
    assert type(processor).__name__ == "LlavaProcessor" and processor.tokenizer.eos_token == "</s>"
    assert processor.chat_template is not None


@shipped
def test_shipped_model_answers_the_fixed_questions(loaded):
    from hallufix.builtin.evaluate import generate

    model, processor = loaded
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    images = [render(sample_scene(random.Random(r["scene_seed"]))) for r in rows]
    answers = generate(model, processor, images, [r["question"] for r in rows], max_new_tokens=3, batch=16)
    by_kind: dict[str, list[bool]] = {}
    for a, r in zip(answers, rows):
        by_kind.setdefault(r["kind"], []).append(a == r["answer"])
    accuracy = {k: sum(v) / len(v) for k, v in by_kind.items()}
    for kind, floor in MIN_ACCURACY.items():
        assert accuracy[kind] >= floor, (kind, accuracy, list(zip(answers, rows)))
    # left padding: the same question alone gives the same answer as inside the padded batch
    alone = generate(model, processor, images[:1], [rows[0]["question"]], max_new_tokens=3)
    assert alone[0] == answers[0]


@shipped
def test_session_loads_the_builtin_alias_and_agrees_with_plain_generate(loaded):
    """``Session.load("builtin")`` (the CLI's default) goes through the same loader as real checkpoints and, with no
    plugin, answers exactly as plain ``generate`` on the Auto classes."""
    from hallufix.api import Session
    from hallufix.builtin.evaluate import generate

    session = Session.load("builtin")
    assert session.info.num_layers >= 8 and session.info.grid == (8, 8)
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()][:16]
    images = [render(sample_scene(random.Random(r["scene_seed"]))) for r in rows]
    outs = session.start([]).generate(images, [r["question"] for r in rows], max_new_tokens=3)
    plain = generate(*loaded, images, [r["question"] for r in rows], max_new_tokens=3, batch=16)
    assert [o.text.strip() for o in outs] == plain


@shipped
def test_shipped_folder_records_its_training_and_evaluation():
    rec = json.loads((BUILTIN_MODEL_DIR / "training.json").read_text())
    assert rec["completed_steps"] == rec["steps"] and rec["git_commit"] and rec["command"] and rec["wall_s"] > 0
    acc = rec["evaluation"]["acceptance"]
    assert set(acc) == {"random_accuracy", "partner_fp_factor", "adversarial_below_random", "object_attention_ratio"}
    assert all(v["ok"] for v in acc.values()), acc  # the shipped weights meet issue #9's acceptance


def _pope_result(partner, other, n_twin=17, n_distinct=271):
    split = {"accuracy": 0.9}
    return {"shapes-pope": {"random": {"accuracy": 0.95}, "adversarial": {"accuracy": 0.9}, "popular": split,
                            "all": {"fp_rate_partner": partner, "fp_rate_other": other}},
            "pope_fp_breakdown": {"other_colour_twin": {"n": n_twin}, "other_distinct": {"n": n_distinct},
                                  "other_random": {"n": 999}, "partner": {"n": 162}},
            "object_attention": {"best_middle": 2.0, "best_middle_layer": 2}}


def test_partner_factor_is_a_ratio_or_a_rule_of_three_bound_when_no_other_false_positive():
    from hallufix.builtin.evaluate import acceptance

    ratio = acceptance(_pope_result(0.3, 0.114))["partner_fp_factor"]
    assert ratio["value"] == round(0.3 / 0.114, 3) and ratio["ok"] is False
    bound = acceptance(_pope_result(0.0864, 0.0))["partner_fp_factor"]
    # 0 of 288 other negatives: the rate is below 3/288 at 95%, so the factor is at least 0.0864 / (3/288)
    assert bound["value"] is None and bound["other_fp"] == "0/288" and bound["lower_bound_95"] == 8.294
    assert bound["ok"] is True
    assert acceptance(_pope_result(0.02, 0.0))["partner_fp_factor"]["ok"] is False  # 0.02 / (3/288) = 1.92
