"""AMBER's generative metrics (CHAIR, Cover, Hal, Cog) per ``inference.py`` (rule in :mod:`hallufix.scoring.amber`).

Nouns: ``nltk.word_tokenize`` and ``nltk.pos_tag`` (tags starting ``NN``) on the raw text, then
``WordNetLemmatizer().lemmatize`` (noun POS). Where NLTK's data is missing, :mod:`hallufix.scoring.nltk_tools`'
stand-ins are used (the tagger's noun guess for ``NN*``) and :attr:`GenerativeScorer.sources` says so.

Word similarity: spaCy ``en_core_web_lg`` Doc-vector cosine, strictly ``> threshold`` (0.8). It is used when
``spacy`` and that model are installed; otherwise :attr:`GenerativeScorer.similarity` is ``None``, the two
similarity steps are skipped, and results carry ``similarity: "skipped ..."``: CHAIR and Hal can then only be
higher (a noun saved by a synonym counts as hallucinated), Cover and Cog only lower.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from hallufix.scoring.amber import INIT

SKIPPED = ("skipped: spaCy en_core_web_lg not installed (pip install spacy; python -m spacy download "
           "en_core_web_lg); exact-match part only, so CHAIR/Hal are upper bounds and Cover/Cog lower bounds")


def spacy_similarity(threshold: float) -> tuple[Callable[[str, str], bool] | None, str]:
    """``(similar(w1, w2) -> bool, description)``, or ``(None, why)`` without spaCy's large English vectors."""
    try:
        import spacy

        nlp = spacy.load("en_core_web_lg")
    except (ImportError, OSError):
        return None, SKIPPED
    cache: dict = {}

    def doc(w):
        if w not in cache:
            cache[w] = nlp(w)
        return cache[w]

    return (lambda a, b: doc(a).similarity(doc(b)) > threshold), f"spaCy en_core_web_lg > {threshold}"


def noun_extractor() -> tuple[Callable[[str], list[str]], dict]:
    """``(text -> lemmatised nouns, sources)`` with NLTK where its data is installed, else the stand-ins."""
    from hallufix.scoring.nltk_tools import missing_data, nltk_installed, pieces

    p = pieces(warn=False)
    if nltk_installed() and "averaged_perceptron_tagger_eng" not in missing_data():
        from nltk import pos_tag

        is_noun = lambda toks: [t.startswith("NN") for _, t in pos_tag(toks)]  # noqa: E731
    else:
        is_noun = lambda toks: [pos == "n" for pos in p.wordnet_pos(toks)]  # noqa: E731

    def nouns(text: str) -> list[str]:
        toks = p.tokenize(text)
        return [p.lemmatize(w, "n") for w, keep in zip(toks, is_noun(toks)) if keep]

    return nouns, {k: v for k, v in p.sources.items() if k != "stand_ins"}


class GenerativeScorer:
    """Scores ``(annotation, response)`` pairs of AMBER's generative task.

    :param relation: ``relation.json`` (word -> association words); :param safe_words: ``safe_words.txt`` lines;
    :param similarity: ``similar(w1, w2) -> bool`` or ``None`` to skip those steps (default: spaCy if installed).
    """

    def __init__(self, relation: dict, safe_words: list[str], similarity="auto", threshold: float = 0.8):
        self.relation, self.safe_words = relation, set(safe_words)
        self.vocab = set(relation) | {w for ws in relation.values() for w in ws}
        if similarity == "auto":
            similarity, self.similarity_source = spacy_similarity(threshold)
        else:
            self.similarity_source = "given" if similarity else SKIPPED
        self.similar = similarity
        self.nouns, self.sources = noun_extractor()

    @classmethod
    def from_folder(cls, data: str | Path, **kw) -> "GenerativeScorer":
        d = Path(data)
        relation = json.loads((d / "relation.json").read_text(encoding="utf-8"))
        safe = [line.split("\n")[0] for line in (d / "safe_words.txt").read_text(encoding="utf-8").splitlines()]
        return cls(relation, safe, **kw)

    def _entries(self, objects: list[str]) -> tuple[list[str], list[int]]:
        """Association words of each object (in order), then the objects; each mapped to its object's index."""
        words, owner = [], []
        for i, obj in enumerate(objects):
            words += self.relation[obj]
            owner += [i] * len(self.relation[obj])
        return words + list(objects), owner + list(range(len(objects)))

    def _first(self, noun: str, words: list[str], exact: bool) -> int | None:
        for j, w in enumerate(words):
            if (noun == w) if exact else self.similar(noun, w):
                return j
        return None

    def one(self, ann: dict, response: str) -> dict:
        """Per response: kept nouns, hallucinated nouns, covered truth / hallu object flags."""
        kept = [n for n in self.nouns(response) if n in self.vocab]
        safe, safe_owner = self._entries(ann["truth"])
        hallu, hallu_owner = self._entries(ann["hallu"])
        covered, cog = [0] * len(ann["truth"]), [0] * len(ann["hallu"])
        hallucinated = []
        for noun in kept:
            if noun in self.safe_words:
                continue
            j = self._first(noun, safe, exact=True)
            if j is not None:
                covered[safe_owner[j]] = 1
                continue
            j = self._first(noun, hallu, exact=True)
            if j is not None:
                cog[hallu_owner[j]] = 1
            if self.similar is not None:
                j = self._first(noun, hallu, exact=False)
                if j is not None:
                    cog[hallu_owner[j]] = 1
                j = self._first(noun, safe, exact=False)
                if j is not None:
                    covered[safe_owner[j]] = 1
                    continue
            hallucinated.append(noun)
        return {"nouns": kept, "hallucinated": hallucinated, "covered": covered, "cog": cog}

    def score(self, pairs) -> dict:
        """``pairs`` of ``(annotation, response)`` -> ``{chair, cover, hal, cog, n, similarity, sources}``."""
        c = dict.fromkeys(("chair", "chair_num", "cover", "cover_num", "cog", "cog_num", "clean", "n"), 0)
        for ann, response in pairs:
            d = self.one(ann, response)
            c["chair"] += len(d["hallucinated"])
            c["chair_num"] += len(d["nouns"])
            c["cover"] += sum(d["covered"])
            c["cover_num"] += len(d["covered"])
            c["cog"] += sum(d["cog"])
            c["cog_num"] += len(d["cog"])
            c["clean"] += not d["hallucinated"]
            c["n"] += 1
        return {"chair": round(c["chair"] / (c["chair_num"] + INIT) * 100, 1),
                "cover": round(c["cover"] / (c["cover_num"] + INIT) * 100, 1),
                "hal": round(100 - c["clean"] / (c["n"] + INIT) * 100, 1),
                "cog": round(c["cog"] / (c["cog_num"] + INIT) * 100, 1), "n": c["n"],
                "similarity": self.similarity_source, "sources": self.sources}
