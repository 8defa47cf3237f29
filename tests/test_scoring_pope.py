"""POPE scoring as published: the parse table of each parser, a worked example, and LLaVA-1.5-13B's
official answers (mean F1 0.859469) through the Python API and ``hallufix score pope``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hallufix.cli import main
from hallufix.scoring.pope import PARSERS, parse_yes_no, pope_metrics, score_splits

# the benchmark data folder beside the repository (HALLUFIX_SHARED_DATA points elsewhere, e.g. from a worktree)
DATA = Path(os.environ.get("HALLUFIX_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared benchmark data folder {DATA} is absent")
POPE = DATA / "pope"
LLAVA_ANSWERS = POPE / "llava15_reference" / "llava-v1.5-13b_answers.jsonl"
LLAVA_QUESTIONS = POPE / "llava15_reference" / "llava_pope_test.jsonl"

# response -> (pope, opera, vcd with gt=yes, vcd with gt=no, lmms-eval prediction)
PARSE_TABLE = {
    "Yes": ("yes", "yes", "yes", "yes", "yes"),
    "No.": ("no", "no", "no", "no", "no."),
    "NO": ("yes", "no", "no", "no", "no"),
    "Yes, there is a dog.": ("yes", "yes", "yes", "yes", "yes, there is a dog."),
    "There is no dog in the image.": ("no", "no", "no", "no", "there is no dog in the image."),
    "Yes. There is no cat.": ("yes", "no", "yes", "no", "yes. there is no cat."),
    "I don't know.": ("yes", "no", "no", "no", "i don't know."),
    "Not sure": ("yes", "yes", "no", "no", "not sure"),
    "None": ("yes", "yes", "no", "no", "none"),
    "no\n": ("yes", "yes", "no", "no", "no"),
    "": ("yes", "yes", "no", "yes", ""),
    "The answer is yes.": ("yes", "yes", "yes", "yes", "the answer is yes."),
}


@pytest.mark.parametrize("response", list(PARSE_TABLE))
def test_parse_table(response):
    pope, opera, vcd_yes, vcd_no, lmms = PARSE_TABLE[response]
    assert parse_yes_no(response) == pope
    assert parse_yes_no(response, "pope") == pope
    assert parse_yes_no(response, "opera") == opera
    assert parse_yes_no(response, "vcd", label="yes") == vcd_yes
    assert parse_yes_no(response, "vcd", label="no") == vcd_no
    assert parse_yes_no(response, "lmms-eval") == lmms


LABELS = ["yes"] * 4 + ["no"] * 6
ANSWERS = ["Yes", "Yes, there is.", "No", "There is no cat.", "No", "no", "Yes", "I don't know.", "No.", "NO"]


@pytest.mark.parametrize("parser, preds, counts, acc, prec, rec, f1, yes", [
    ("pope", "yynnnnyyny", (2, 3, 3, 2), 0.5, 0.4, 0.5, 0.4444, 0.5),
    ("opera", "yynnnnynnn", (2, 1, 5, 2), 0.7, 0.6667, 0.5, 0.5714, 0.3),
    ("vcd", None, (2, 1, 5, 2), 0.7, 0.6667, 0.5, 0.5714, 0.3),
])
def test_worked_example(parser, preds, counts, acc, prec, rec, f1, yes):
    parsed = [parse_yes_no(a, parser, label=l) for a, l in zip(ANSWERS, LABELS)]
    if preds:
        assert "".join(p[0] for p in parsed) == preds
    m = pope_metrics(LABELS, parsed)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"]) == (*counts, 10)
    assert [round(m[k], 4) for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == [acc, prec, rec, f1, yes]


def test_lmms_eval_exact_match_counts_only_clean_answers():
    m = pope_metrics(LABELS, [parse_yes_no(a, "lmms-eval") for a in ANSWERS])
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"]) == (0.4, 0.5, 0.5, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 3, 1)  # "no." "yes, there is." ... enter no cell


def test_zero_division_gives_zero_and_counts():
    m = pope_metrics(["yes", "no", "no"], ["no", "no", "no"])
    assert (m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (0, 0, 2, 1) and m["accuracy"] == pytest.approx(2 / 3)
    assert pope_metrics([], [])["accuracy"] == 0.0
    with pytest.raises(ValueError, match="2 labels but 1"):
        pope_metrics(["yes", "no"], ["yes"])


def test_unknown_parser_and_vcd_without_label():
    with pytest.raises(ValueError, match="known: pope, opera, vcd, lmms-eval"):
        parse_yes_no("Yes", "llava")
    with pytest.raises(ValueError, match="label"):
        parse_yes_no("Yes", "vcd")
    assert PARSERS == ("pope", "opera", "vcd", "lmms-eval")


def test_score_splits_mean_f1_is_unweighted():
    rows = [("a", "yes", "yes"), ("a", "no", "yes"), ("b", "yes", "yes"), ("b", "no", "no"), ("b", "no", "no")]
    res = score_splits(rows)
    assert res["a"]["f1"] == pytest.approx(2 / 3) and res["b"]["f1"] == 1.0
    assert res["all"]["mean_f1"] == pytest.approx((2 / 3 + 1) / 2)


REFERENCE = {  # the published per-split counts and metrics of these answers
    "adversarial": (3000, 1182, 117, 1383, 318, 0.855000, 0.909931, 0.788000, 0.844587, 0.433000),
    "popular": (3000, 1182, 59, 1441, 318, 0.874333, 0.952458, 0.788000, 0.862459, 0.413667),
    "random": (2910, 1182, 31, 1379, 318, 0.880069, 0.974444, 0.788000, 0.871360, 0.416838),
}


def _check_reference(res):
    assert round(res["mean_f1"], 6) == 0.859469
    for split, (n, tp, fp, tn, fn, acc, prec, rec, f1, yes) in REFERENCE.items():
        m = res[split]
        assert (m["n"], m["tp"], m["fp"], m["tn"], m["fn"]) == (n, tp, fp, tn, fn)
        assert [round(m[k], 6) for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == \
            [acc, prec, rec, f1, yes]


@needs_data
@pytest.mark.parametrize("with_question_file", [False, True])
def test_llava15_13b_official_answers_cli_json(capsys, with_question_file):
    args = ["score", "pope", "--questions", str(POPE / "coco_llava15")]
    if with_question_file:
        args += ["--questions", str(LLAVA_QUESTIONS)]
    assert main(args + ["--answers", str(LLAVA_ANSWERS), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"adversarial", "popular", "random", "mean_f1"}
    assert set(res["random"]) == {"accuracy", "precision", "recall", "f1", "yes_ratio", "tp", "fp", "tn", "fn", "n"}
    _check_reference(res)


@needs_data
def test_llava15_answers_do_not_fit_the_current_3000_version(capsys):
    assert main(["score", "pope", "--questions", str(POPE / "coco"), "--answers", str(LLAVA_ANSWERS)]) == 2
    assert "unanswered" in capsys.readouterr().err


@needs_data
def test_single_split_with_plain_ids_and_readable_table(tmp_path, capsys):
    labels = [json.loads(x) for x in (POPE / "coco" / "coco_pope_popular.json").read_text().splitlines()[:6]]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": r["question_id"], "text": "Yes"}) + "\n" for r in labels))
    qfile = tmp_path / "coco_pope_popular.json"
    qfile.write_text("".join(json.dumps(r) + "\n" for r in labels))
    assert main(["score", "pope", "--questions", str(qfile), "--answers", str(answers)]) == 0
    out = capsys.readouterr().out
    assert "popular" in out and "mean F1 over splits: 0.666667" in out  # 3 yes / 3 no, all answered yes


def test_bad_inputs_name_file_and_line(tmp_path, capsys):
    labels = tmp_path / "coco_pope_random.json"
    labels.write_text('{"question_id": 1, "image": "x.jpg", "text": "Is there a cat?", "label": "yes"}\n')
    bad = tmp_path / "answers.jsonl"
    bad.write_text('{"question_id": 1, "text": "Yes"}\n{"question_id": 2, "text": \n')
    assert main(["score", "pope", "--questions", str(labels), "--answers", str(bad)]) == 2
    assert f"{bad}:2: malformed JSON line" in capsys.readouterr().err
    missing = tmp_path / "nope.jsonl"
    assert main(["score", "pope", "--questions", str(labels), "--answers", str(missing)]) == 2
    assert f"file not found: {missing}" in capsys.readouterr().err
    assert main(["score", "pope", "--questions", str(tmp_path / "none"), "--answers", str(bad)]) == 2
    assert "not found" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text('{"question_id": 1, "text": "Yes"}\n')
    assert main(["score", "pope", "--questions", str(labels), "--answers", str(good), "--parser", "llava"]) == 2
    assert "unknown POPE parser 'llava'; known: pope, opera, vcd, lmms-eval" in capsys.readouterr().err
    good.write_text('{"question_id": 1, "text": "Yes"}\n{"question_id": 7, "text": "No"}\n')
    assert main(["score", "pope", "--questions", str(labels), "--answers", str(good)]) == 2
    assert "unknown question ids [7]" in capsys.readouterr().err
