"""AMBER scored as its inference.py does: exact Yes/No, "No" the positive class, the 0.001 denominators, F1 from
rounded P/R with its per-block epsilon; the generative exact-match rule; the AMBER score; ``hallufix score amber``.

The hand-computed numbers below are worked out in the comments from the official counters."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hallufix.cli import main
from hallufix.scoring.amber import amber_score, discriminative
from hallufix.scoring.amber_generative import GenerativeScorer
from hallufix.tasks.amber import normalise_response

DATA = Path(os.environ.get("HALLUFIX_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(not (DATA / "amber").is_dir(), reason=f"AMBER files under {DATA} are absent")

# an annotations.json in the official layout: ids 1-2 generative, 3.. discriminative
ANNOTATIONS = [
    {"id": 1, "type": "generative", "truth": ["dog", "tree"], "hallu": ["cat", "car"]},
    {"id": 2, "type": "generative", "truth": ["cat"], "hallu": ["dog"]},
    *({"id": i, "type": "discriminative-hallucination", "truth": "no"} for i in (3, 4, 5)),
    {"id": 6, "type": "discriminative-attribute-state", "truth": "yes"},
    {"id": 7, "type": "discriminative-attribute-state", "truth": "no"},
    {"id": 8, "type": "discriminative-attribute-number", "truth": "no"},
    {"id": 9, "type": "discriminative-attribute-action", "truth": "yes"},
    {"id": 10, "type": "discriminative-relation", "truth": "yes"},
    {"id": 11, "type": "relation", "truth": "no"},
]
# official inference layout; note "no" (lower case) and "No." are neither correct nor a "No" answer
RESPONSES = [{"id": 3, "response": "No"}, {"id": 4, "response": "No"}, {"id": 5, "response": "Yes"},
             {"id": 6, "response": "Yes"}, {"id": 7, "response": "no"}, {"id": 8, "response": "No"},
             {"id": 9, "response": "No."}, {"id": 10, "response": "Yes"}, {"id": 11, "response": "Yes"}]
RELATION = {"dog": ["puppy"], "cat": ["kitten"], "car": [], "tree": [], "sign": []}

EXPECTED = {
    # 2 of 3 correct: 2/3.001 = 66.64 -> 66.6 (66.7 without the 0.001); P 2/2.001 = 99.95002 -> 100.0;
    # R 66.6; F1 2*1.0*0.666/(1.666+0.001) = 0.79904 -> 79.9
    "existence": {"accuracy": 66.6, "precision": 100.0, "recall": 66.6, "f1": 79.9, "n": 3},
    # pooled over state+number+action, denominators N + 0.003: acc 2/4.003 -> 50.0; P 1/1.003 -> 99.7;
    # R 1/2.003 -> 49.9; F1 2*.997*.499/(.997+.499+.0001) = 0.66507 -> 66.5
    "attribute": {"accuracy": 50.0, "precision": 99.7, "recall": 49.9, "f1": 66.5, "n": 4},
    "state": {"accuracy": 50.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 2},  # 1/2.001 = 49.975 -> 50.0
    "number": {"accuracy": 99.9, "precision": 99.9, "recall": 99.9, "f1": 99.9, "n": 1},  # 1/1.001 -> 99.9
    "action": {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 1},
    "relation": {"accuracy": 50.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 2},
    # 5/9.001 = 55.549 -> 55.5 (55.6 without the 0.001); P 3/3.001 -> 100.0; R 3/6.001 = 49.99 -> 50.0;
    # F1 2*1*.5/(1.5+.0001) = 0.666622 -> 66.7
    "overall": {"accuracy": 55.5, "precision": 100.0, "recall": 50.0, "f1": 66.7, "n": 9},
}


@pytest.fixture
def amber_data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "annotations.json").write_text(json.dumps(ANNOTATIONS))
    (d / "relation.json").write_text(json.dumps(RELATION))
    (d / "safe_words.txt").write_text("sign\nline\n")
    return d


def test_discriminative_hand_computed_example():
    types = {a["id"]: (a["type"], a["truth"]) for a in ANNOTATIONS}
    assert discriminative([(*types[r["id"]], r["response"]) for r in RESPONSES]) == EXPECTED


def test_existence_block_uses_its_own_epsilon():
    # 30 "no" questions, 2 answered "No": P = 2/2.001 -> 100.0, R = 2/30.001 -> 6.7; F1 = 2*1*.067/(1.067 + eps):
    # Existence (eps 0.001) 0.125468 -> 12.5, Relation (eps 0.0001) 0.125574 -> 12.6
    answers = ["No"] * 2 + ["Yes"] * 28
    ex = discriminative([("discriminative-hallucination", "no", a) for a in answers])["existence"]
    rel = discriminative([("relation", "no", a) for a in answers])["relation"]
    assert (ex["precision"], ex["recall"], ex["f1"]) == (100.0, 6.7, 12.5)
    assert (rel["precision"], rel["recall"], rel["f1"]) == (100.0, 6.7, 12.6)


def test_amber_score_formula_matches_the_readme_rows():
    assert amber_score(7.8, 74.7) == pytest.approx(83.45)  # LLaVA-1.5: 83.5 in the table
    assert amber_score(4.6, 87.4) == pytest.approx(91.4)  # GPT-4V


def test_generative_exact_match_rule(amber_data):
    scorer = GenerativeScorer.from_folder(amber_data, similarity=None)
    scorer.nouns = lambda text: text.split()  # the rule itself, independent of the tagger
    anns = {a["id"]: a for a in ANNOTATIONS}
    one = scorer.one(anns[1], "puppy tree car sign")
    # puppy covers dog (association word), tree covers tree, car is a hallu object (Cog) and hallucinated,
    # sign is a safe word: skipped but counted in the denominator
    assert one == {"nouns": ["puppy", "tree", "car", "sign"], "hallucinated": ["car"], "covered": [1, 1],
                   "cog": [0, 1]}
    res = scorer.score([(anns[1], "puppy tree car sign"), (anns[2], "kitten dog")])
    # CHAIR 2/6.001 -> 33.3; Cover 3/3.001 -> 100.0; Hal 100 - 0/2.001 -> 100.0; Cog 2/3.001 -> 66.6
    assert {k: res[k] for k in ("chair", "cover", "hal", "cog", "n")} == {"chair": 33.3, "cover": 100.0,
                                                                           "hal": 100.0, "cog": 66.6, "n": 2}
    assert res["similarity"].startswith("skipped")


def test_generative_similarity_step_saves_a_noun(amber_data):
    similar = lambda a, b: {a, b} == {"car", "tree"}  # noqa: E731
    scorer = GenerativeScorer.from_folder(amber_data, similarity=similar)
    scorer.nouns = lambda text: text.split()
    one = scorer.one(ANNOTATIONS[0], "car")
    assert one["hallucinated"] == [] and one["covered"] == [0, 1] and one["cog"] == [0, 1]


def test_response_normalisation():
    assert [normalise_response(t) for t in ("Yes", "yes.", " No, there is not.", "Maybe")] == \
        ["Yes", "Yes", "No", "Maybe"]
    assert normalise_response("yes", "exact") == "yes"


def test_score_amber_cli_on_the_official_layout(amber_data, tmp_path, capsys):
    resp = tmp_path / "responses.json"
    resp.write_text(json.dumps(RESPONSES + [{"id": 1, "response": "A puppy sits under a tree."}]))
    assert main(["score", "amber", "--responses", str(resp), "--data", str(amber_data), "--json",
                 "--similarity", "off"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {k: out[k] for k in EXPECTED} == EXPECTED
    assert out["generative"]["cover"] == 100.0 and out["generative"]["chair"] == 0.0
    assert out["amber_score"] == pytest.approx((100 - 0.0 + 66.7) / 2)
    assert main(["score", "amber", "--responses", str(resp), "--data", str(amber_data), "--json",
                 "--evaluation-type", "de"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"existence"}


def test_bad_ids_are_named(amber_data, tmp_path, capsys):
    resp = tmp_path / "r.json"
    resp.write_text(json.dumps([{"id": 99, "response": "Yes"}]))
    assert main(["score", "amber", "--responses", str(resp), "--data", str(amber_data)]) == 2
    assert "id 99" in capsys.readouterr().err


@needs_data
def test_official_annotations_counts():
    from hallufix.scoring.amber import dimension_of, load_annotations

    anns = load_annotations(DATA / "amber" / "annotations.json")
    dims = [dimension_of(a["type"])[0] for a in anns if a["type"] != "generative"]
    assert (len(anns), dims.count("existence"), dims.count("attribute"), dims.count("relation")) == \
        (15220, 4924, 7628, 1664)


def test_spacy_vectors_are_used_when_installed(amber_data, monkeypatch):
    """With spaCy and en_core_web_lg importable, the similarity step runs through nlp(w1).similarity(nlp(w2)) > 0.8
    (strict); a stand-in module plays spaCy here."""
    import types

    sims = {frozenset(("car", "tree")): 0.81, frozenset(("car", "cat")): 0.8}

    class Doc:
        def __init__(self, w):
            self.w = w

        def similarity(self, other):
            return 1.0 if self.w == other.w else sims.get(frozenset((self.w, other.w)), 0.0)

    loaded = []
    fake = types.SimpleNamespace(load=lambda name: loaded.append(name) or Doc)
    monkeypatch.setitem(__import__("sys").modules, "spacy", fake)
    scorer = GenerativeScorer.from_folder(amber_data)
    assert loaded == ["en_core_web_lg"] and scorer.similarity_source == "spaCy en_core_web_lg > 0.8"
    scorer.nouns = lambda text: text.split()
    one = scorer.one(ANNOTATIONS[0], "car")
    # car == hallu "car" (Cog), car~cat is exactly 0.8 (not > 0.8), car~tree 0.81 saves it and covers tree
    assert one["hallucinated"] == [] and one["covered"] == [0, 1] and one["cog"] == [0, 1]
