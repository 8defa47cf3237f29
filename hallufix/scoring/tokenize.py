"""Offline stand-in for NLTK's ``word_tokenize`` on captions (no Punkt data needed).

``word_tokenize`` first splits sentences with the Punkt model, then applies the Treebank-style word tokenizer to
each sentence. Here sentences end at ``.``, ``!`` or ``?`` (a closing quote or bracket may follow) and white
space, except after a common abbreviation that Punkt's English model lists (``mr.``, ``st.``; not ``etc.`` or
``e.g.``, where it does break), and except after an initial or a number (the period last) before a lower-case word
(``john c. reilly``, ``18. apparition``: Punkt's orthographic rule, which on lower-cased captions nearly always
says "no break"). With nltk installed but Punkt's data absent, each sentence goes to NLTK's own data-free
``NLTKWordTokenizer`` (:mod:`hallufix.scoring.nltk_tools`); without nltk, to Treebank-style rules written from
their description (equal to ``NLTKWordTokenizer`` on 12,339 benchmark sentences, docs/benchmarks.md):

* a sentence-final period, ``?``, ``!``, ``;``, ``@``, ``#``, ``$``, ``%``, ``&``, brackets and ``--`` become
  tokens; a comma or colon becomes a token unless a digit follows (``1,000`` and ``3:30`` stay whole);
  ``...`` is one token;
* double quotes become ``\\`\\``` (opening) and ``''`` (closing); unicode quotes and dashes are split off;
* an opening single quote splits off a word (``'hello'`` -> ``'`` ``hello`` ``'``) unless it starts a clitic;
* clitics split off: ``child's`` -> ``child`` ``'s``; ``don't`` -> ``do`` ``n't``; ``'ll 're 've 'm 'd``;
  ``cannot`` -> ``can`` ``not``;
* hyphens, slashes and inner periods are kept (``t-shirt``, ``black/white``, ``3.5``).

Input is expected lower-cased (every CHAIR implementation lower-cases first).
"""
from __future__ import annotations

import re

#: Common words that Punkt's English model treats as abbreviations (no sentence break after their period).
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "vs", "u.s", "a.m", "p.m", "jr", "sr", "prof", "inc", "co",
                           "ltd", "ft", "jan", "feb", "aug", "sep", "sept", "oct", "nov", "dec", "ave", "corp", "gen",
                           "lt", "col", "ok"})
_NUMBER = re.compile(r"^-?[.,]?\d[\d,.-]*$")  # what Punkt counts as a number

_SENT_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")
_RULES = [(re.compile(p), r) for p, r in (
    ("([«“‘„]|`+)", r" \1 "), (r'^ "', " `` "), (r"([ (\[{<])(\"|'{2})", r"\1 `` "),  # opening quotes
    ("([»”’])", r" \1 "), ("[\u2012-\u2015]", r" \g<0> "),                  # closing quotes, dashes
    (r"([:,])([^\d])", r" \1 \2"), (r"([:,])$", r" \1 "),                      # , and : unless a digit follows
    (r"\.{2,}", r" \g<0> "), (r"[;@#$%&]", r" \g<0> "),
    (r'([^.])(\.)([\])}>"\']*)\s*$', r"\1 \2\3 "),                              # sentence-final period
    (r"[?!]", r" \g<0> "), (r"([^'])' ", r"\1 ' "), (r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", r"\1 "),
    (r"[\]\[(){}<>]", r" \g<0> "), (r"--", r" -- "),
    (r'"', " '' "), (r"(\S)('')", r"\1 \2 "),                                 # closing quotes
    (r"([^' ])('s|'m|'d|') ", r"\1 \2 "), (r"([^' ])('ll|'re|'ve|n't) ", r"\1 \2 "),
    (r"\b(can)(not)\b", r" \1 \2 "), (r"\b(gon)(na)\b", r" \1 \2 "), (r"\b(got)(ta)\b", r" \1 \2 "),
    (r"\b(wan)(na)(?=\s)", r" \1 \2 "), (r"\b(gim)(me)\b", r" \1 \2 "), (r"\b(lem)(me)\b", r" \1 \2 "),
)]


def _joins(prev: str, piece: str) -> bool:
    """No sentence break between ``prev`` (ending in a period) and ``piece``."""
    if not prev.endswith("."):
        return False  # a quote or bracket after the period: Punkt breaks there
    word = prev[:-1].rsplit(None, 1)[-1] if prev[:-1].split() else ""
    if word in ABBREVIATIONS:
        return True
    initial_or_number = (len(word) == 1 and word.isalpha()) or bool(_NUMBER.match(word))
    return initial_or_number and piece[:1].isalpha() and piece[:1].islower()


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: a break after ``.``/``!``/``?`` + white space, except where :func:`_joins` says no."""
    out: list[str] = []
    for piece in _SENT_END.split(text.strip()):
        prev = out[-1] if out else None
        if prev is not None and _joins(prev, piece):
            out[-1] = f"{prev} {piece}"
        else:
            out.append(piece)
    return [s for s in out if s]


def tokenize_sentence(sentence: str) -> list[str]:
    """Treebank-style tokens of one sentence."""
    s = f" {sentence.strip()} "
    for pattern, repl in _RULES:
        s = pattern.sub(repl, s)
    return s.split()


def word_tokenize(text: str) -> list[str]:
    """Tokens of a (lower-cased) caption: sentences split, then Treebank-style rules per sentence."""
    return [t for sent in split_sentences(text) for t in tokenize_sentence(sent)]
