"""HallusionBench: the five official metrics and the uncertain rule on a hand-built correctness file, the
duplicate-key error, VLMEvalKit's yes/no extraction, and the released sample file through the yes/no path."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hallufix.cli import main
from hallufix.scoring.hallusionbench import process_punctuation, yes_no_extraction

DATA = Path(os.environ.get("HALLUFIX_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
HB = DATA / "hallusionbench"
needs_data = pytest.mark.skipif(not HB.is_dir(), reason=f"HallusionBench files under {HB} are absent")


def row(cat, sub, vis, set_id, fig, q, label, **kw):
    return {"category": cat, "subcategory": sub, "visual_input": str(vis), "set_id": str(set_id),
            "figure_id": str(fig), "sample_note": "x", "question_id": str(q), "question": "Is it?",
            "gt_answer_details": "", "gt_answer": "1", "filename": None, "human_check": str(label), **kw}


# VS chart set 0: figure 0 is the image-free version (visual_input 0), figure 1 the original (1), figure 2 edited (2)
ROWS = [
    row("VS", "chart", 0, 0, 0, 0, 2),  # uncertain on an image-free VS question: counts as correct
    row("VS", "chart", 0, 0, 0, 1, 1),
    row("VS", "chart", 1, 0, 1, 0, 1),
    row("VS", "chart", 1, 0, 1, 1, 1),
    row("VS", "chart", 2, 0, 2, 0, 0),
    row("VS", "chart", 2, 0, 2, 1, 1),
    # VD illusion set 0: figure 0 is an original image (visual_input 1), figure 1 edited (2)
    row("VD", "illusion", 1, 0, 0, 0, 2),  # uncertain on a VD question: wrong
    row("VD", "illusion", 1, 0, 0, 1, 1),
    row("VD", "illusion", 2, 0, 1, 0, 1),
    row("VD", "illusion", 2, 0, 1, 1, 1),
]
# correct: T T T T F T | F T T T  -> aAcc 8/10
# pairs (cat_sub_set_q): VS q0 {T,T,F} F, VS q1 {T,T,T} T, VD q0 {F,T} F, VD q1 {T,T} T -> qAcc 2/4
# figures without VS fig 0: VS fig1 {T,T} T, VS fig2 {F,T} F, VD fig0 {F,T} F, VD fig1 {T,T} T -> fAcc 2/4
# easy (visual_input != 2): VS q0 {T,T} T, VS q1 {T,T} T, VD q0 {F} F, VD q1 {T} T -> 3/4
# hard (visual_input == 2): VS q0 {F} F, VS q1 {T} T, VD q0 {T} T, VD q1 {T} T -> 3/4
EXPECTED = {"aAcc": 80.0, "qAcc": 50.0, "fAcc": 50.0, "easy_acc": 75.0, "hard_acc": 75.0, "n": 10, "pairs": 4,
            "figures": 4, "easy_n": 6, "hard_n": 4}


def score(tmp_path, capsys, rows, *extra):
    f = tmp_path / "results.json"
    f.write_text(json.dumps(rows, indent=4))
    code = main(["score", "hallusionbench", "--results", str(f), "--json", *extra])
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if code == 0 else cap.err)


def test_five_metrics_and_the_uncertain_rule(tmp_path, capsys):
    code, out = score(tmp_path, capsys, ROWS, "--correctness-field", "human_check")
    assert code == 0
    assert {k: out[k] for k in EXPECTED} == EXPECTED
    assert out["method"].startswith("official")
    # the same file with the uncertain label on the image-free VS question turned into "wrong"
    rows = [dict(r) for r in ROWS]
    rows[0]["human_check"] = "0"
    _, out0 = score(tmp_path, capsys, rows, "--correctness-field", "human_check")
    assert out0["aAcc"] == 70.0 and out0["easy_acc"] == 50.0 and out0["fAcc"] == 50.0  # fAcc excludes VS fig 0


def test_rounding_is_four_decimals(tmp_path, capsys):
    rows = [row("VD", "ocr", 1, 0, 0, q, 1 if q else 0) for q in range(3)]
    _, out = score(tmp_path, capsys, rows, "--correctness-field", "human_check")
    assert out["aAcc"] == 66.6667


def test_duplicate_keys_are_an_error_naming_them(tmp_path, capsys):
    code, err = score(tmp_path, capsys, ROWS + [ROWS[3], ROWS[8]], "--correctness-field", "human_check")
    assert code == 2
    assert "2 duplicate question keys" in err and "VS_chart_0_1_1" in err and "VD_illusion_0_1_0" in err


def test_bad_labels_and_missing_fields_are_named(tmp_path, capsys):
    rows = [dict(r) for r in ROWS]
    rows[2]["human_check"] = "yes"
    code, err = score(tmp_path, capsys, rows, "--correctness-field", "human_check")
    assert code == 2 and "0, 1 or 2" in err
    code, err = score(tmp_path, capsys, ROWS, "--correctness-field", "gpt4v_output_gpt_check")
    assert code == 2 and "lack 'gpt4v_output_gpt_check'" in err


@pytest.mark.parametrize("text, expected", [
    ("Yes, the circles are the same size.", "Yes"), ("No.", "No"), ("no", "No"),
    ("Yes and no.", "Unknown"), ("I cannot tell.", "Unknown"), ("(yes)", "Yes"), ("Not really", "Unknown"),
    ("yes-no question", "Unknown"),  # '-' becomes a space, so both words are present
])
def test_vlmevalkit_yes_no_extraction(text, expected):
    assert yes_no_extraction(text) == expected


def test_a_digit_comma_makes_punctuation_vanish():
    # with a digit,digit comma anywhere, every listed character is deleted (not spaced), gluing words together
    assert process_punctuation("yes,1,2") == "yes12" and yes_no_extraction("yes,1,2") == "Unknown"
    assert process_punctuation("yes,it is") == "yes it is"  # ',' touches no space: replaced by one
    assert process_punctuation("pi is 3.14. yes.") == "pi is 3.14 yes"  # periods before a digit stay


def test_yes_no_path_scores_against_gt_answer(tmp_path, capsys):
    rows = [dict(r, model_prediction=p) for r, p in zip(ROWS, ["Yes", "Yes.", "No", "Yes", "Yes", "Yes", "yes",
                                                                 "Unsure", "Yes", "Yes"])]
    rows[4]["gt_answer"] = "0"
    code, out = score(tmp_path, capsys, rows)
    # correct: T T F T F T T F T T -> aAcc 70; figures (no VS fig-0 exclusion): VS f0 T, f1 F, f2 F, VD f0 F,
    # VD f1 T -> 40; pairs: VS q0 {T,F,F} F, VS q1 {T,T,T} T, VD q0 {T,T} T, VD q1 {F,T} F -> 50
    assert code == 0 and (out["aAcc"], out["fAcc"], out["qAcc"]) == (70.0, 40.0, 50.0)
    assert out["overall"] == round((70 + 40 + 50) / 3, 4) and out["unknown"] == 1
    assert out["method"].startswith("VLMEvalKit")


@needs_data
def test_released_sample_through_the_yes_no_path(capsys):
    args = ["score", "hallusionbench", "--results", str(HB / "HallusionBench_result_sample.json"),
            "--questions", str(HB / "HallusionBench.json"), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 254 and out["method"].startswith("VLMEvalKit")
    assert (out["aAcc"], out["qAcc"], out["fAcc"]) == (51.5748, 19.6581, 21.519)
    # without gt_answer the message says where it comes from
    assert main(args[:4]) == 2
    assert "--questions HallusionBench.json" in capsys.readouterr().err
