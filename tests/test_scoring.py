"""Scoring exactly as published (MME, CHAIR, paired comparisons): real reference files in ../shared/data and the
worked examples of benchmarks.md. POPE has its own file, test_scoring_pope.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hallufix.cli import main
from hallufix.scoring.chair import ChairScorer
from hallufix.scoring.mme import parse_mme, subtask_score

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data folder {DATA} is absent")

# benchmarks.md §2.5 (c): the hand-checkable CHAIR example (ground truth per image, one caption per image)
HAND_GT = {1: {"person", "bus", "dog"}, 2: {"toilet", "sink"}, 3: {"tie", "person", "elephant"},
           4: {"dining table", "pizza"}}
HAND_CAPTIONS = ["A man and a woman stand next to a bus. A dog sits near the bench.",
                 "The bathroom has a toilet seat and a sink with two glasses of wine.",
                 "Two men wearing ties stand beside a baby elephant.",
                 "A pizza on a dining table, next to a wine glass and a cell phone."]

@needs_data
def test_lavin_mme_predictions(capsys):
    m = DATA / "mme"
    assert main(["score", "mme", "--ground-truth", str(m / "ground_truth"), "--answers",
                 str(m / "lavin_predictions"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert round(res["perception"], 4) == 963.6114 and round(res["cognition"], 4) == 249.6429
    assert round(res["hallucination"], 2) == 411.67
    table = {"existence": 185.00, "count": 88.33, "position": 63.33, "color": 75.00, "posters": 79.59,
             "celebrity": 47.35, "scene": 136.75, "landmark": 93.50, "artwork": 87.25, "OCR": 107.50,
             "commonsense_reasoning": 87.14, "numerical_calculation": 65.00, "text_translation": 47.50,
             "code_reasoning": 50.00}
    for sub, score in table.items():
        assert round(res["subtasks"][sub]["score"], 2) == score


def test_mme_worked_example_and_parser():
    rows = [("a", "Yes", "yes"), ("a", "No", "no"), ("b", "Yes", "yes"), ("b", "No", "yes"),
            ("c", "Yes", "no"), ("c", "No", "There is no")]
    m = subtask_score(rows)
    assert round(m["acc"], 2) == 50.0 and round(m["acc_plus"], 2) == 33.33 and round(m["score"], 2) == 83.33
    assert parse_mme("Not really") == "no" and parse_mme("There is no") == "other" and parse_mme("YES") == "yes"


def test_chair_core_rules():
    syn = {"dog": "dog", "puppy": "dog", "toilet": "toilet", "seat": "chair", "elephant": "elephant",
           "person": "person", "man": "person", "table": "dining table"}
    dw = {"toilet seat": "toilet", "baby elephant": "elephant"}
    sc = ChairScorer(syn, dw)
    res = sc.score([(1, "A puppy and a man near a toilet seat."), (2, "A baby elephant at the table.")],
                   {1: {"dog", "toilet"}, 2: {"elephant"}})
    assert res["details"][0]["mentions"] == ["dog", "person", "toilet"]
    assert res["details"][1]["mentions"] == ["elephant", "dining table"]
    assert res["chair_s"] == 100.0 and res["chair_i"] == pytest.approx(100 * 2 / 5)
    assert res["recall"] == pytest.approx(100.0)


def test_mcnemar_and_paired_bootstrap(tmp_path):
    from hallufix.report import mcnemar_exact, paired_comparison

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)  # exact binomial tail, two-sided
    for name, correct in (("base", [1, 1, 0, 0, 1, 0]), ("run", [1, 1, 1, 1, 0, 1])):
        d = tmp_path / name
        d.mkdir()
        lines = [json.dumps({"id": f"q{i}", "answer": "yes", "parsed": "yes" if c else "no"})
                 for i, c in enumerate(correct)]
        (d / "samples.jsonl").write_text("\n".join(lines) + "\n")
    cmp = paired_comparison(tmp_path / "base", tmp_path / "run")
    assert cmp["n"] == 6 and cmp["accuracy_diff"] == pytest.approx(2 / 6)
    assert (cmp["only_baseline_right"], cmp["only_run_right"]) == (1, 3)
    assert cmp["ci95"][0] <= 2 / 6 <= cmp["ci95"][1]


@needs_data
def test_chair_pattern_normaliser_reproduces_maxlinn_reference_and_hand_example():
    from hallufix.scoring.chair import coco_double_words, read_synonyms

    ref = json.loads((DATA / "chair" / "maxlinn_example" / "outputs.json").read_text())
    sc = ChairScorer(read_synonyms(DATA / "chair" / "synonyms.txt"), coco_double_words(), normaliser="pattern")
    for s in ref["sentences"]:
        words, nodes, merged = sc.mentions(s["caption"])
        assert nodes == s["mscoco_generated_words"]
        assert [sc.normalise(sc.tokenize(s["caption"]))][0] == s["words"]
    res = sc.score([(s["image_id"], s["caption"]) for s in ref["sentences"]],
                   {s["image_id"]: set(s["mscoco_gt_words"]) for s in ref["sentences"]})
    assert res["chair_s"] == 0.0 and res["chair_i"] == 0.0
    assert res["recall"] / 100 == pytest.approx(ref["overall_metrics"]["Recall"])
    r = sc.score(list(zip(HAND_GT, HAND_CAPTIONS)), HAND_GT)
    assert (r["chair_s"], r["chair_i"], r["recall"], r["length"]) == (50.0, 25.0, 80.0, 14.0)
    assert [d["mentions"] for d in r["details"]] == [["person", "person", "dog", "bench"], ["toilet", "sink"],
                                                     ["person", "elephant"],
                                                     ["pizza", "dining table", "wine glass", "cell phone"]]


def _wordnet_installed() -> bool:
    from hallufix.scoring.wordnet import WordNetMissing, find_wordnet

    try:
        find_wordnet()
    except WordNetMissing:
        return False
    return True


needs_wordnet = pytest.mark.skipif(not _wordnet_installed(),
                                   reason="WordNet 3.0 files absent: apt-get install wordnet-base (scripts/test.sh does)")


@needs_data
@needs_wordnet
def test_chair_nltk_normaliser_reproduces_the_hand_example_and_its_quirks():
    """benchmarks.md §2.5 (c), nltk row: bus and ties are kept (WordNet lemmas), "men" is not lemmatised (both
    "men" and "man" are WordNet nouns), so image 3 loses its person; CHAIR_I 3/13, recall 9/10."""
    from hallufix.scoring.chair import coco_double_words, read_synonyms

    sc = ChairScorer(read_synonyms(DATA / "chair" / "synonyms.txt"), coco_double_words(), normaliser="nltk")
    r = sc.score(list(zip(HAND_GT, HAND_CAPTIONS)), HAND_GT)
    assert (r["chair_s"], r["recall"], r["length"]) == (50.0, 90.0, 14.0)
    assert r["chair_i"] == pytest.approx(100 * 3 / 13)
    assert [d["mentions"] for d in r["details"]] == [["person", "person", "bus", "dog", "bench"], ["toilet", "sink"],
                                                     ["tie", "elephant"],
                                                     ["pizza", "dining table", "wine glass", "cell phone"]]
    assert sc.normalise(["men", "ties", "buses", "glasses"]) == ["men", "tie", "bus", "glass"]


@needs_data
def test_mme_llava_jsonl_answers_join_to_the_same_scores(tmp_path, capsys):
    """LLaVA's answer JSONL + question JSONL (image ``<subtask>/<file>``, the LLaVA suffix on the prompt, answers in
    another order) joins on (category, image, question) like convert_answer_to_mme.py: the same totals as the
    eval_tool folder."""
    import random as _random

    m = DATA / "mme"
    questions, answers, qid = [], [], 0
    for f in sorted((m / "lavin_predictions").glob("*.txt")):
        for line in f.read_text().splitlines():
            image, question, _gt, response = line.split("\t")
            questions.append({"question_id": qid, "image": f"{f.stem}/{image}", "category": f.stem,
                              "text": question + "\nAnswer the question using a single word or phrase."})
            answers.append({"question_id": qid, "prompt": question, "text": response, "model_id": "lavin"})
            qid += 1
    _random.Random(0).shuffle(answers)
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    assert main(["score", "mme", "--ground-truth", str(m / "ground_truth"), "--answers", str(tmp_path / "a.jsonl"),
                 "--questions", str(tmp_path / "q.jsonl"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert round(res["perception"], 4) == 963.6114 and round(res["cognition"], 4) == 249.6429
    assert main(["score", "mme", "--ground-truth", str(m / "ground_truth"), "--answers",
                 str(tmp_path / "a.jsonl")]) != 0
    assert "--questions" in capsys.readouterr().err
