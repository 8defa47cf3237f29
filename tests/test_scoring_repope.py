"""RePOPE: its parser and metrics, Table 1's relabelling shares reproduced from the released label files, and
LLaVA-1.5-13B's released POPE answers scored under both label sets (``hallufix score repope``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hallufix.cli import main
from hallufix.scoring.repope import parse_repope, relabel_table, repope_metrics, score_both
from hallufix.tasks.pope import load_labels
from hallufix.tasks.repope import load_repope, object_key

DATA = Path(os.environ.get("HALLUFIX_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(not (DATA / "repope").is_dir(), reason=f"RePOPE files under {DATA} are absent")
REF = DATA / "pope" / "llava15_reference"

# RePOPE Table 1 (percent of POPE yes / no labels that RePOPE labels yes / no / ambiguous)
TABLE1 = {"random": {"yes": (76.9, 9.3, 13.8), "no": (0.3, 98.4, 1.3)},
          "popular": {"yes": (76.9, 9.3, 13.8), "no": (2.6, 93.0, 4.4)},
          "adversarial": {"yes": (76.9, 9.3, 13.8), "no": (2.2, 90.5, 7.3)}}


@pytest.mark.parametrize("text, parsed", [("Yes", "yes"), ("No.", "no"), ("I don't know", "no"), ("eyes", "yes"),
                                          ("not sure yes", "yes"), ("nobody", "no"), ("Maybe", None), ("", None),
                                          ("NOT", "no")])
def test_parser_is_a_substring_rule(text, parsed):
    assert parse_repope(text) == parsed


def test_unparsed_answers_leave_every_denominator():
    m = repope_metrics(["yes", "yes", "no", "no", "no"], ["yes", None, "no", "yes", None])
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"], m["n_scored"]) == (1, 1, 1, 0, 5, 3)
    assert m["accuracy"] == pytest.approx(2 / 3) and m["yes_ratio"] == pytest.approx(2 / 3)
    assert m["precision"] == 0.5 and m["recall"] == 1.0 and m["f1"] == pytest.approx(2 / 3)


def test_score_both_scores_the_same_answers_twice_dropping_ambiguous():
    rows = [("random", "yes", "no", "yes"), ("random", "no", None, "yes"), ("random", "no", "no", "no")]
    out = score_both(rows, "pope")
    assert out["random"]["n"] == 3 and out["random"]["fp"] == 1
    assert out["repope-random"]["n"] == 2 and out["repope-random"]["fp"] == 1 and out["repope-random"]["tn"] == 1
    assert out["all"]["repope_mean_f1"] == 0.0 and out["all"]["mean_f1"] == pytest.approx(2 / 3)


@needs_data
@pytest.mark.parametrize("split", list(TABLE1))
def test_table1_relabelling_shares(split):
    pope = {object_key(r["image"], r["text"]): r["label"] for r in load_labels(DATA / "pope" / "coco")[split]}
    table = relabel_table(pope, load_repope(DATA / "repope")[split])
    for old, shares in TABLE1[split].items():
        got = table[old]
        assert (got["yes_pct"], got["no_pct"], got["ambiguous_pct"]) == shares
        assert got["yes"] + got["no"] + got["ambiguous"] == got["n"] == 1500


@needs_data
def test_llava_13b_answers_under_both_label_sets(capsys):
    args = ["score", "repope", "--questions", str(DATA / "pope" / "coco_llava15"), "--questions",
            str(REF / "llava_pope_test.jsonl"), "--answers", str(REF / "llava-v1.5-13b_answers.jsonl"),
            "--repope-labels", str(DATA / "repope"), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["mean_f1"], 6) == 0.859469  # LLaVA-1.5-13B's published POPE number, POPE labels
    # RePOPE labels: every RePOPE question of popular/adversarial answered; random (LLaVA's v1 file) 2687 of 2774
    assert out["coverage"]["popular"] == {"repope_questions": 2727, "answered": 2727}
    assert out["coverage"]["adversarial"] == {"repope_questions": 2684, "answered": 2684}
    assert out["coverage"]["random"] == {"repope_questions": 2774, "answered": 2687}
    assert [out[f"repope-{s}"]["n"] for s in ("random", "popular", "adversarial")] == [2687, 2727, 2684]
    adv = out["repope-adversarial"]
    assert (adv["tp"], adv["fp"], adv["tn"], adv["fn"]) == (1036, 108, 1389, 151)
    assert round(out["repope_mean_f1"], 6) == 0.903383
    # RePOPE flips far more POPE "yes" than "no" labels, so the model's F1 rises on every split
    assert all(out[f"repope-{s}"]["f1"] > out[s]["f1"] for s in ("random", "popular", "adversarial"))


def test_missing_label_files_name_the_fix(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text('{"question_id": 1, "text": "Yes"}\n')
    assert main(["score", "repope", "--questions", str(tmp_path), "--answers", str(tmp_path / "a.jsonl"),
                 "--repope-labels", str(tmp_path)]) == 2
    assert "pope" in capsys.readouterr().err.lower()
