"""`hallufix score` on lmms-eval sample logs (--log_samples), in lmms-eval 0.7's layout: the small fixtures in
tests/data/lmms_eval (written by tests/lmms_eval_layout.py, the writer's steps redone) and full-size logs built
the same way from the released LLaVA-1.5 POPE answers and LaVIN's MME answers, which must give their published
figures. Cross-checked by hand against lmms-eval 0.7's own pope/mme utils (same accuracy, precision, recall, F1,
MME totals)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import lmms_eval_layout as layout
import pytest

from hallufix.cli import main

DATA = Path(os.environ.get("HALLUFIX_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data folder {DATA} is absent")
LOGS = Path(__file__).resolve().parent / "data" / "lmms_eval"
POPE_LOG = LOGS / "20260101_120000_samples_pope_adv.jsonl"
MME_LOG = LOGS / "20260101_120000_samples_mme.jsonl"
CHAIR_LOG = LOGS / "20260101_120000_samples_coco_cap_chair.jsonl"


def _score(capsys, *args) -> dict:
    assert main(["score", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_fixtures_have_the_writers_layout():
    """Key order as lmms-eval 0.7 writes a generate_until line; no doc, no arguments; resps only where the raw
    output differs (reasoning tags stripped); targets as str()."""
    first = json.loads(POPE_LOG.read_text().splitlines()[0])
    assert list(first) == ["doc_id", "target", "filtered_resps", "token_counts", "doc_hash", "pope_accuracy",
                           "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio", "input"]
    mme = [json.loads(line) for line in MME_LOG.read_text().splitlines()]
    assert list(mme[0])[:3] == ["doc_id", "target", "resps"] and mme[0]["resps"].startswith("<think>")
    assert "resps" not in mme[1] and mme[0]["input"].endswith("\nAnswer the question using a single word or phrase.")
    chair = json.loads(CHAIR_LOG.read_text().splitlines()[0])
    assert chair["target"] == str(chair["coco_cap_chair_i"]["answer"])


def test_pope_log_scored_with_each_parser(capsys):
    res = _score(capsys, "pope", "--answers", str(POPE_LOG))
    assert (res["adversarial"]["tp"], res["adversarial"]["fp"], res["adversarial"]["tn"], res["adversarial"]["fn"]) \
        == (6, 1, 5, 0)
    assert res["notes"] and "128 new tokens" in res["notes"][0]
    # lmms-eval's own rule: exact match; 'Yes.' and 'There is no car...' count as wrong (lmms-eval 0.7's
    # pope_aggregate_* give the same 0.5 / 1.0 / 0.75 / 0.857 on this file)
    res = _score(capsys, "pope", "--answers", str(POPE_LOG), "--parser", "lmms-eval")["adversarial"]
    assert (res["accuracy"], res["precision"], res["recall"]) == (0.5, 1.0, 0.75)
    assert res["f1"] == pytest.approx(6 / 7)


@needs_data
def test_pope_full_logs_of_llava_answers_give_the_published_mean_f1(tmp_path, capsys):
    """pope_full = pope_adv + pope_pop + pope_random, one log each: LLaVA-1.5-13B's answers -> 85.9."""
    ref = DATA / "pope" / "llava15_reference"
    cat = {q["question_id"]: q["category"] for q in map(json.loads, (ref / "llava_pope_test.jsonl").read_text()
                                                          .splitlines())}
    answers = [json.loads(line) for line in (ref / "llava-v1.5-13b_answers.jsonl").read_text().splitlines()]
    offset = {"adversarial": 0, "random": 10_000_000, "popular": 20_000_000}
    logs = []
    for split, task in (("adversarial", "pope_adv"), ("popular", "pope_pop"), ("random", "pope_random")):
        labels = [json.loads(line) for line in (DATA / "pope" / "coco_llava15" / f"coco_pope_{split}.json")
                  .read_text().splitlines() if line.strip()]
        by_id = {a["question_id"] - offset[split]: a["text"] for a in answers if cat[a["question_id"]] == split}
        path = tmp_path / f"20260101_120000_samples_{task}.jsonl"
        path.write_text("".join(layout.pope(i, str(q["question_id"]), q["text"], q["label"], split,
                                            by_id[q["question_id"]]) for i, q in enumerate(labels)))
        logs += ["--answers", str(path)]
    for parser in ("pope", "lmms-eval"):
        res = _score(capsys, "pope", *logs, "--parser", parser)
        assert round(res["mean_f1"], 6) == 0.859469
        assert (res["random"]["tp"], res["random"]["fp"], res["random"]["tn"], res["random"]["fn"]) == \
            (1182, 31, 1379, 318)


def test_mme_log_scored_without_ground_truth_files(capsys):
    res = _score(capsys, "mme", "--answers", str(MME_LOG))
    assert res["subtasks"]["count"]["score"] == 125.0 and res["subtasks"]["code_reasoning"]["score"] == 50.0
    assert "16 new tokens" in res["notes"][0]


@needs_data
def test_mme_log_of_lavin_answers_gives_the_official_totals(tmp_path, capsys):
    lines, i = [], 0
    for f in sorted((DATA / "mme" / "lavin_predictions").glob("*.txt")):
        for line in f.read_text().splitlines():
            image, question, gt, response = line.split("\t")
            lines.append(layout.mme(i, f"{f.stem}/{image}", question, gt, f.stem, response, 0.0))
            i += 1
    log = tmp_path / "20260101_120000_samples_mme.jsonl"
    log.write_text("".join(reversed(lines)))  # order does not matter: an image's questions are grouped
    for parser in ("official", "lmms-eval"):
        res = _score(capsys, "mme", "--answers", str(log), "--parser", parser)
        assert round(res["perception"], 4) == 963.6114 and round(res["cognition"], 4) == 249.6429
    log.write_text("".join(lines[1:]))
    assert main(["score", "mme", "--answers", str(log)]) == 2
    assert "has 1 questions in the log" in capsys.readouterr().err


def test_chair_log_scored_with_its_own_ground_truth(tmp_path, capsys):
    """Maxlinn's two captions as a coco_cap_chair log: the log's GT objects, the caption re-scored; the mention
    lists agree with the node words lmms-eval logged (NLTK's), whichever nltk pieces are installed here."""
    res = _score(capsys, "chair", "--captions", str(CHAIR_LOG))
    assert (res["chair_s"], res["chair_i"], res["length"], res["n"]) == (0.0, 0.0, 80.0, 2)
    assert res["recall"] == pytest.approx(100 * 6 / 7) and res["lmms_eval_mentions_differ"] == 0
    assert any("2048 new tokens" in n for n in res["notes"])
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"1290": ["person"], "6871": ["bear"]}))
    res = _score(capsys, "chair", "--captions", str(CHAIR_LOG), "--gt-objects", str(gt))
    assert res["chair_s"] == 50.0 and res["recall"] == 100.0


def test_bad_logs_are_named(tmp_path, capsys):
    wrong = tmp_path / "20260101_120000_samples_textvqa.jsonl"
    wrong.write_text(POPE_LOG.read_text())
    assert main(["score", "pope", "--answers", str(wrong)]) == 2
    assert "expected the log of an lmms-eval POPE task" in capsys.readouterr().err
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"question_id": 1, "text": "Yes"}\n')
    assert main(["score", "pope", "--answers", str(POPE_LOG), "--answers", str(answers)]) == 2
    assert "not both" in capsys.readouterr().err
    broken = tmp_path / "20260101_120000_samples_mme.jsonl"
    broken.write_text(MME_LOG.read_text().splitlines()[0].replace('"target"', '"tgt"') + "\n")
    assert main(["score", "mme", "--answers", str(broken)]) == 2
    assert f"{broken}:1: not an lmms-eval sample-log line (no target)" in capsys.readouterr().err
