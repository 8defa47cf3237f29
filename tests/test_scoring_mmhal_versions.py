"""MMHal-Bench's rating read and summary (LLaVA-RLHF eval_gpt4.py), judge errors, and POPE file identification."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hallufix.scoring.mmhal import JudgeError, check_template, judge_rows, make_judge, rating_of, summarise
from hallufix.tasks.pope import label_files
from hallufix.tasks.pope_versions import describe

DATA = Path(os.environ.get("HALLUFIX_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(not (DATA / "pope").is_dir(), reason=f"POPE files under {DATA} are absent")


@pytest.mark.parametrize("reply, rating", [("The answer is right. Rating: 5", 5), ("rating: 0, hallucinated", 0),
                                           ("Rating: 2 ... or Rating: 3", None), ("no rating here", None),
                                           ("RATING: 6", 6), ("Rating:4", None)])
def test_rating_read(reply, rating):
    assert rating_of(reply) == rating


def test_summary_unreadable_scores_zero_and_hallucination_below_three():
    rows = [{"question_type": t} for t in ["a", "b"] * 2]
    judged = [{"rating": 6, "score": 6}, {"rating": 3, "score": 3}, {"rating": None, "score": 0},
              {"rating": 2, "score": 2}]
    s = summarise(rows, judged)
    assert s["average_score"] == pytest.approx(11 / 4) and s["hallucination_rate"] == 0.5
    assert s["per_type"] == {"a": 3.0, "b": 2.5} and s["unreadable"] == 1 and s["order_types_match"] is False


def test_judge_rows_formats_the_official_prompt():
    seen = []
    rows = [{"image_content": ["a dog", "a ball"], "question": "Q?", "gt_answer": "G", "model_answer": "M"}]
    out = judge_rows(rows, lambda p: seen.append(p) or "Rating: 3", "{}|{}|{}|{}")
    assert seen == ["a dog, a ball|Q?|G|M"] and out[0]["score"] == 3


def test_judge_errors_are_clear():
    with pytest.raises(JudgeError, match="four"):
        check_template("only {} and {}")
    with pytest.raises(JudgeError, match="cannot import"):
        make_judge("no_such_module_xyz:judge")
    run, how = make_judge("false")
    with pytest.raises(JudgeError, match="exited 1"):
        run("prompt")


@needs_data
@pytest.mark.parametrize("folder, dataset, version", [("coco", "coco", "v4-current"),
                                                       ("coco_llava15", "coco", "v1-llava15"),
                                                       ("history/53023fd/output/coco", "coco", "v2-53023fd"),
                                                       ("history/edebdda/output/coco", "coco", "v3-edebdda"),
                                                       ("aokvqa", "aokvqa", "seem"), ("gqa", "gqa", "seem")])
def test_pope_files_are_identified(folder, dataset, version):
    rec = describe(label_files(DATA / "pope" / folder))
    assert (rec["dataset"], rec["version"]) == (dataset, version)
