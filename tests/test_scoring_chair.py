"""CHAIR as published: the vocabulary rules, the pattern variant on Maxlinn's reference output, the nltk variant on
the hand example of benchmarks.md — with NLTK itself where it and its data are installed, and otherwise with the
offline stand-ins (which must warn, and must run from a pip install alone: packaged WordNet data, no nltk needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hallufix.scoring import nltk_tools
from hallufix.scoring.chair import ChairScorer, coco_double_words, read_synonyms
from hallufix.scoring.wordnet import WordNet, data_path, load

# the benchmark data folder beside the repository (HALLUFIX_SHARED_DATA points elsewhere, e.g. from a worktree)
DATA = Path(os.environ.get("HALLUFIX_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data folder {DATA} is absent")
MAXLINN = DATA / "chair" / "maxlinn_example"

# the hand-checkable CHAIR example (ground truth per image, one caption per image)
HAND_GT = {1: {"person", "bus", "dog"}, 2: {"toilet", "sink"}, 3: {"tie", "person", "elephant"},
           4: {"dining table", "pizza"}}
HAND_CAPTIONS = ["A man and a woman stand next to a bus. A dog sits near the bench.",
                 "The bathroom has a toilet seat and a sink with two glasses of wine.",
                 "Two men wearing ties stand beside a baby elephant.",
                 "A pizza on a dining table, next to a wine glass and a cell phone."]
NLTK_ROW = [["person", "person", "bus", "dog", "bench"], ["toilet", "sink"], ["tie", "elephant"],
            ["pizza", "dining table", "wine glass", "cell phone"]]


@pytest.fixture
def offline(monkeypatch):
    """NLTK's data reported absent (nltk itself may be installed): the stand-ins, warning afresh."""
    monkeypatch.setattr(nltk_tools, "missing_data", lambda: list(nltk_tools.DATA))
    nltk_tools.reset()
    yield
    nltk_tools.reset()


def nltk_complete() -> bool:
    nltk_tools.reset()
    return not nltk_tools.missing_data()


def _assert_nltk_row(sc: ChairScorer) -> None:
    r = sc.score(list(zip(HAND_GT, HAND_CAPTIONS)), HAND_GT)
    assert (r["chair_s"], r["recall"], r["length"]) == (50.0, 90.0, 14.0)
    assert r["chair_i"] == pytest.approx(100 * 3 / 13)
    assert [d["mentions"] for d in r["details"]] == NLTK_ROW


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


@needs_data
def test_chair_pattern_normaliser_reproduces_maxlinn_reference_and_hand_example():
    ref = json.loads((MAXLINN / "outputs.json").read_text())
    sc = ChairScorer(read_synonyms(DATA / "chair" / "synonyms.txt"), coco_double_words(), normaliser="pattern")
    for s in ref["sentences"]:
        words, nodes, merged = sc.mentions(s["caption"])
        assert nodes == s["mscoco_generated_words"]
        assert sc.normalise(sc.tokenize(s["caption"])) == s["words"]
    res = sc.score([(s["image_id"], s["caption"]) for s in ref["sentences"]],
                   {s["image_id"]: set(s["mscoco_gt_words"]) for s in ref["sentences"]})
    assert res["chair_s"] == 0.0 and res["chair_i"] == 0.0
    assert res["recall"] / 100 == pytest.approx(ref["overall_metrics"]["Recall"])
    r = sc.score(list(zip(HAND_GT, HAND_CAPTIONS)), HAND_GT)
    assert (r["chair_s"], r["chair_i"], r["recall"], r["length"]) == (50.0, 25.0, 80.0, 14.0)
    assert [d["mentions"] for d in r["details"]] == [["person", "person", "dog", "bench"], ["toilet", "sink"],
                                                     ["person", "elephant"],
                                                     ["pizza", "dining table", "wine glass", "cell phone"]]


def test_offline_nltk_normaliser_warns_and_reproduces_the_hand_example(offline):
    """Without NLTK's data: one warning naming what is missing, the download command and the measured deviation;
    the stand-ins still give the hand example's nltk row (bus and ties kept, "men" not lemmatised)."""
    with pytest.warns(nltk_tools.NltkApproximationWarning) as caught:
        sc = ChairScorer.coco("nltk")
    msg = str(caught[0].message)
    assert "punkt_tab, averaged_perceptron_tagger_eng, wordnet not found" in msg
    assert "python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng wordnet" in msg
    assert "measured deviation" in msg and "\n" not in msg
    assert sc.sources["lemmatize"] == "packaged WordNet 3.0 data" and sc.sources["pos_tag"] == "rule-based guesser"
    _assert_nltk_row(sc)
    assert sc.normalise(["men", "ties", "buses", "glasses"]) == ["men", "tie", "bus", "glass"]


@pytest.mark.skipif(not nltk_complete(), reason="NLTK or its data (punkt_tab, averaged_perceptron_tagger_eng, "
                                                "wordnet) not installed: python -m nltk.downloader ...")
def test_with_nltk_and_its_data_the_nltk_normaliser_is_nltk():
    import nltk
    from nltk.stem import WordNetLemmatizer

    nltk_tools.reset()
    sc = ChairScorer.coco("nltk")
    assert sc.sources == {"tokenize": "nltk.word_tokenize", "pos_tag": "nltk.pos_tag",
                          "lemmatize": "nltk WordNetLemmatizer", "missing": [], "stand_ins": []}
    lem = WordNetLemmatizer()
    for caption in HAND_CAPTIONS:
        toks = nltk.word_tokenize(caption.lower())
        assert sc.words(caption) == [lem.lemmatize(w, nltk_tools.penn_to_wordnet(t)) for w, t in nltk.pos_tag(toks)]
    _assert_nltk_row(sc)


def test_packaged_wordnet_is_nltks_lemmatiser():
    """The shipped WordNet 3.0 data with NLTK's morphy: known NLTK answers, NLTK 3.8's recursive step on request;
    compared form by form with WordNetLemmatizer where NLTK's wordnet data is installed."""
    assert data_path().is_file() and (data_path().parent / "WORDNET-LICENSE.txt").is_file()
    wn = load()
    assert len(wn.lemmas["n"]) == 117798 and len(wn.exceptions["v"]) == 2401
    cases = {("men", "n"): "men", ("ties", "n"): "tie", ("buses", "n"): "bus", ("sitting", "v"): "sit",
             ("has", "v"): "have", ("us", "n"): "u", ("geese", "n"): "goose", ("better", "a"): "good",
             ("catss", "n"): "catss", ("aardwolves", "n"): "aardwolf", ("abaci", "n"): "abacus"}
    assert {k: wn.lemmatize(*k) for k in cases} == cases
    assert wn.lemmatize("catss", "n", recursive=True) == "cat"
    if "wordnet" in nltk_tools.missing_data():
        pytest.skip("NLTK's wordnet data absent: the form-by-form comparison needs it")
    from nltk.stem import WordNetLemmatizer

    lem = WordNetLemmatizer()
    for pos in "nvar":
        forms = sorted(wn.lemmas[pos])[::50] + sorted(wn.exceptions[pos])
        forms += [f + s for f in sorted(wn.lemmas[pos])[::200] for s in ("s", "es", "ed", "ing", "er")]
        assert [wn.lemmatize(f, pos) for f in forms] == [lem.lemmatize(f, pos) for f in forms]


def test_rewritten_treebank_rules_equal_nltks_tokenizer():
    """Without nltk the Treebank rules are re-written; they give NLTKWordTokenizer's tokens (quotes, clitics,
    brackets, unicode quotes and dashes, numbers)."""
    pytest.importorskip("nltk")
    from nltk.tokenize import NLTKWordTokenizer

    from hallufix.scoring.tokenize import split_sentences, tokenize_sentence

    texts = [c.lower() for c in HAND_CAPTIONS] + [
        "is the output of the code 'hello'?", "a man's hat, the dogs' bowl and a child's toy (red).",
        "we can't see; it isn't there -- or is it?", "the sign reads \"stop\" and 3,000 people left at 3:30.",
        "it\u2019s the \u201cbest\u201d view\u2014really.", "i'd say they're gonna cannot wanna go...",
        "a price of $5 & 10% off @ the store #1."]
    if DATA.is_dir():
        texts += [json.loads(ln)["caption"].lower() for ln in (MAXLINN / "example_inputs.jsonl").read_text()
                  .splitlines()]
    words = NLTKWordTokenizer().tokenize
    for text in texts:
        for s in split_sentences(text):
            assert tokenize_sentence(s) == words(s), s


def test_sentence_rules_follow_punkt_on_lower_cased_text():
    from hallufix.scoring.tokenize import split_sentences

    assert split_sentences("a man. a dog! two cats? one.") == ["a man.", "a dog!", "two cats?", "one."]
    assert split_sentences("mr. smith and john c. reilly at no. 18. apparition.") == [
        "mr. smith and john c. reilly at no.", "18. apparition."]
    assert split_sentences("it says 'a cat.' the cat sits, etc. the end") == ["it says 'a cat.'", "the cat sits, etc.",
                                                                              "the end"]
    assert split_sentences("from 2000-2050. if aged 78.\" this") == ["from 2000-2050. if aged 78.\"", "this"]


def test_part_of_speech_guesser_picks_the_lemma_the_tagger_would():
    from hallufix.scoring.postag import wordnet_pos

    wn = load()

    def lemmas(text):
        toks = text.split()
        return [wn.lemmatize(t, p) for t, p in zip(toks, wordnet_pos(toks, wn))]

    assert lemmas("the training data shows a man training a dog") == [
        "the", "training", "data", "show", "a", "man", "train", "a", "dog"]
    assert lemmas("training data of my last training run") == ["training", "data", "of", "my", "last", "training",
                                                                "run"]
    assert lemmas("a man skiing down a hill holding skis") == ["a", "man", "ski", "down", "a", "hill", "hold", "ski"]
    assert lemmas("a cat seated on a green potted plant") == ["a", "cat", "seat", "on", "a", "green", "potted",
                                                              "plant"]
    assert lemmas("the largest bear depicts two skiers skiing") == ["the", "large", "bear", "depict", "two", "skier",
                                                                    "ski"]
    assert lemmas("he has sat on a potted plant") == ["he", "have", "sit", "on", "a", "potted", "plant"]


@needs_data
def test_pip_only_install_scores_the_maxlinn_example_without_nltk_or_debian_files(tmp_path):
    """A fresh venv: no nltk (blocked), no NLTK data, HALLUFIX_WORDNET unset; `hallufix score chair --normaliser
    nltk` on Maxlinn's example gives today's figures, reads no Debian WordNet file, warns in one line."""
    ref = json.loads((MAXLINN / "outputs.json").read_text())
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({str(s["image_id"]): s["mscoco_gt_words"] for s in ref["sentences"]}))
    probe = (
        "import sys, json\n"
        "sys.modules['nltk'] = None\n"
        "opened = []\n"
        "sys.addaudithook(lambda ev, a: opened.append(str(a[0])) if ev == 'open' and isinstance(a[0], str) else None)\n"
        "from hallufix.cli import main\n"
        f"rc = main(['score', 'chair', '--captions', {str(MAXLINN / 'example_inputs.jsonl')!r}, '--gt-objects', "
        f"{str(gt)!r}, '--normaliser', 'nltk', '--json'])\n"
        "bad = [p for p in opened if '/usr/share/wordnet' in p or 'nltk_data' in p]\n"
        "print(json.dumps({'rc': rc, 'debian_or_nltk_files': bad}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HALLUFIX_WORDNET", "NLTK_DATA")}
    env["NLTK_DATA"] = str(tmp_path / "empty_nltk_data")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result, probe_out = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert probe_out == {"rc": 0, "debian_or_nltk_files": []}
    assert (result["chair_s"], result["chair_i"], result["length"], result["n"]) == (0.0, 0.0, 80.0, 2)
    assert result["recall"] == pytest.approx(100 * 6 / 7)
    assert result["sources"]["tokenize"] == "sentence rules + re-written Treebank rules (nltk absent)"
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("hallufix: warning:")]
    assert len(warnings) == 1 and "the nltk package not found" in warnings[0]
    assert "pip install 'hallufix[chair]'" in warnings[0]


def test_fresh_wordnet_folder_reads_the_same_as_the_packaged_data(tmp_path):
    """WordNet.from_folder reads a database folder (index.* + *.exc) as the build script does."""
    (tmp_path / "index.noun").write_text("  1 licence header\ndog n 1 0 1 0 02084071\nman n 1 0 1 0 1\n"
                                         "men n 1 0 1 0 2\n")
    for name in ("verb", "adj", "adv"):
        (tmp_path / f"index.{name}").write_text("  1 licence header\n")
    (tmp_path / "noun.exc").write_text("men man\n")
    wn = WordNet.from_folder(tmp_path)
    assert wn.lemmatize("dogs") == "dog" and wn.lemmatize("men") == "men" and wn.lemmatize("cats") == "cats"
