"""Measure CHAIR's offline stand-ins against NLTK itself (the figures in docs/benchmarks.md, CHAIR).

    NLTK_DATA=... python scripts/measure_nltk_standins.py DATA_DIR [--json]

Needs ``nltk`` and whichever NLTK data packages are to be compared (``wordnet``, ``punkt_tab``,
``averaged_perceptron_tagger_eng``); a piece whose data is absent is skipped, saying so. DATA_DIR is a folder of
the benchmark files (``mme/``, ``chair/``, ``hallusionbench/``, ``pope/``) whose English text is the corpus:
MME questions and LaVIN's sentence answers, HallusionBench questions, reference answers and model predictions,
POPE questions and Maxlinn's CHAIR example captions, all lower-cased as CHAIR does. Reported:

* lemmas: the packaged WordNet data vs ``WordNetLemmatizer`` on every WordNet 3.0 lemma, every exception-list
  form and regular inflections of every one-word lemma, per part of speech; and how often NLTK 3.8's recursive
  lemmatiser (``nltk-3.8``) differs from NLTK's;
* tokens: per sentence, the re-written Treebank rules vs ``NLTKWordTokenizer``; per text, the offline sentence
  rules + ``NLTKWordTokenizer`` vs ``nltk.word_tokenize`` (Punkt);
* tags: texts whose lemmas differ when the rule-based guesser replaces ``nltk.pos_tag``, and texts whose CHAIR
  mentions differ between the full offline pipeline and NLTK's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def corpus(data: Path) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    mme = data / "mme"
    texts["mme_questions"] = [ln.split("\t")[1] for f in sorted((mme / "ground_truth").glob("*.txt"))
                              for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    texts["lavin_answers"] = [ln.split("\t")[3] for f in sorted((mme / "lavin_predictions").glob("*.txt"))
                              for ln in f.read_text(encoding="utf-8").splitlines() if ln.count("\t") >= 3]
    hb = data / "hallusionbench"
    recs = json.loads((hb / "HallusionBench.json").read_text(encoding="utf-8"))
    texts["hallusionbench_questions"] = [r["question"] for r in recs]
    texts["hallusionbench_answers"] = [r["gt_answer_details"] for r in recs if r.get("gt_answer_details")]
    preds = json.loads((hb / "HallusionBench_result_sample.json").read_text(encoding="utf-8"))
    texts["hallusionbench_predictions"] = [r["model_prediction"] for r in preds if r.get("model_prediction")]
    pope = (data / "pope" / "coco" / "coco_pope_adversarial.json").read_text().splitlines()
    texts["pope_questions"] = sorted({json.loads(ln)["text"] for ln in pope if ln.strip()})
    texts["chair_captions"] = [json.loads(ln)["caption"] for ln in (data / "chair" / "maxlinn_example" /
                                                                    "example_inputs.jsonl").read_text().splitlines()]
    return {k: [t.lower() for t in v if t.strip()] for k, v in texts.items()}


def lemma_check(ours) -> dict:
    from nltk.stem import WordNetLemmatizer

    lem = WordNetLemmatizer()
    out = {}
    for pos in "nvar":
        forms = set(ours.lemmas[pos]) | set(ours.exceptions[pos])
        for lemma in [x for x in ours.lemmas[pos] if x.isalpha()]:
            forms |= {lemma + "s", lemma + "es", lemma + "ed", lemma + "ing", lemma + "er", lemma + "est",
                      lemma[:-1] + "ies" if lemma.endswith("y") else lemma + "ies"}
        forms = sorted(forms)
        differ = [f for f in forms if ours.lemmatize(f, pos) != lem.lemmatize(f, pos)]
        recursive = sum(ours.lemmatize(f, pos, recursive=True) != lem.lemmatize(f, pos) for f in forms)
        out[pos] = {"forms": len(forms), "differ": len(differ), "examples": differ[:5],
                    "nltk_3.8_differs": recursive}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import nltk
    from nltk.tokenize import NLTKWordTokenizer

    from hallufix.scoring import nltk_tools
    from hallufix.scoring.chair import ChairScorer
    from hallufix.scoring.postag import wordnet_pos
    from hallufix.scoring.tokenize import split_sentences, tokenize_sentence
    from hallufix.scoring.wordnet import WordNet

    missing = nltk_tools.missing_data()
    ours = WordNet.packaged()
    texts = corpus(args.data)
    report: dict = {"nltk": nltk.__version__, "missing": missing,
                    "texts": {k: len(v) for k, v in texts.items()}}
    if "wordnet" not in missing:
        report["lemmas"] = lemma_check(ours)
    words = NLTKWordTokenizer().tokenize
    sentences = [s for v in texts.values() for t in v for s in split_sentences(t)]
    bad = [s for s in sentences if tokenize_sentence(s) != words(s)]
    report["tokens_rewritten_vs_NLTKWordTokenizer"] = {"sentences": len(sentences), "differ": len(bad),
                                                       "examples": bad[:5]}
    all_texts = [t for v in texts.values() for t in v]
    if "punkt_tab" not in missing:
        off = [t for t in all_texts if [w for s in split_sentences(t) for w in words(s)] != nltk.word_tokenize(t)]
        report["tokens_offline_vs_word_tokenize"] = {"texts": len(all_texts), "differ": len(off),
                                                     "examples": off[:5]}
    if not missing:
        from nltk.stem import WordNetLemmatizer

        lem = WordNetLemmatizer().lemmatize
        per_text, tokens_differ, n_tokens, older = 0, 0, 0, 0
        examples = []
        for t in all_texts:
            toks = nltk.word_tokenize(t)
            real = [lem(w, nltk_tools.penn_to_wordnet(tag)) for w, tag in nltk.pos_tag(toks)]
            tags = [nltk_tools.penn_to_wordnet(tag) for _, tag in nltk.pos_tag(toks)]
            guess = [ours.lemmatize(w, p) for w, p in zip(toks, wordnet_pos(toks, ours))]
            older += sum(ours.lemmatize(w, p, recursive=True) != a for w, p, a in zip(toks, tags, real))
            d = [(w, a, b) for w, a, b in zip(toks, real, guess) if a != b]
            n_tokens += len(toks)
            tokens_differ += len(d)
            per_text += bool(d)
            examples += d[: max(0, 10 - len(examples))]
        report["lemmas_with_guessed_tags"] = {"texts": len(all_texts), "texts_differ": per_text,
                                              "tokens": n_tokens, "tokens_differ": tokens_differ,
                                              "tokens_nltk_3.8_lemmatiser_differs": older,
                                              "examples": examples}
        exact = ChairScorer.coco("nltk")
        nltk_tools.missing_data, saved = (lambda: list(nltk_tools.DATA)), nltk_tools.missing_data
        nltk_tools.reset()
        try:
            offline = ChairScorer.coco("nltk")
            mentions = [t for t in all_texts if exact.mentions(t)[1] != offline.mentions(t)[1]]
        finally:
            nltk_tools.missing_data = saved
            nltk_tools.reset()
        report["chair_mentions_offline_vs_nltk"] = {"texts": len(all_texts), "differ": len(mentions),
                                                    "examples": mentions[:5]}
    print(json.dumps(report, indent=None if args.json else 2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
