"""CHAIR (Rohrbach et al., 2018): object hallucination in captions, with the community's vocabulary rules.

Pipeline per caption (``benchmarks.md`` §2.2): lower-case, tokenise, normalise each token, merge double words
(``"baby elephant"`` -> elephant, ``"toilet seat"`` -> toilet, ...), drop ``seat`` when ``toilet`` is present,
keep the tokens in the vocabulary (duplicates kept) and map them to their node words (classes).

Metrics over captions: CHAIR_s (captions with a hallucinated mention / captions), CHAIR_i (hallucinated mentions /
mentions), recall (distinct ground-truth nodes mentioned / ground-truth nodes, micro-averaged), and length (mean
merged tokens per caption). Outputs are x100 for the three fractions, as papers print them.

The scorer takes any synonym table, so the built-in shapes world is scored by the same code with its own
vocabulary. Normalisers are pluggable (:data:`NORMALISERS`); ``identity`` is exact for vocabularies written in
singular words (the shapes world).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable

ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
COCO_DOUBLE_WORDS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "bow tie", "laptop computer", "stove top oven", "home plate", "train track")


def read_synonyms(path: str | Path) -> dict[str, str]:
    """``synonyms.txt`` -> ``{entry: node word}``: each line split on ``", "`` exactly, first entry the node
    (quirks kept: entries with a leading space or capitals never match)."""
    table: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        entries = line.strip().split(", ")
        if entries and entries[0]:
            for e in entries:
                table[e] = entries[0]
    return table


def coco_double_words() -> dict[str, str]:
    """The COCO double-word table with its overrides (``benchmarks.md`` §2.2 step 3)."""
    d = {w: w for w in COCO_DOUBLE_WORDS}
    for a in ANIMALS:
        d[f"baby {a}"] = a
        d[f"adult {a}"] = a
    d.update({"passenger jet": "jet", "passenger train": "train", "bow tie": "tie", "toilet seat": "toilet",
              "wine glas": "wine glass"})
    return d


_TOKEN = re.compile(r"[a-z0-9]+(?=n't)|n't|'(?:s|re|ve|ll|d|m)\b|[a-z0-9]+(?:-[a-z0-9]+)*|[^\sa-z0-9]")


def simple_tokenize(text: str) -> list[str]:
    """Treebank-style split of a lower-cased caption: words, single punctuation marks, and clitics as their own
    tokens (``child's`` -> ``child``, ``'s``; ``don't`` -> ``do``, ``n't``), as NLTK's ``word_tokenize`` does for
    plain caption text (without needing its Punkt data)."""
    return _TOKEN.findall(text.lower())


def _pattern(tokens: list[str]) -> list[str]:
    from hallufix.scoring.singular import singularize

    return [singularize(t) for t in tokens]


#: ``identity``: tokens unchanged (exact for singular vocabularies such as the shapes world);
#: ``pattern``: the original paper's singulariser applied to every token (see :mod:`hallufix.scoring.singular`).
NORMALISERS: dict[str, Callable[[list[str]], list[str]]] = {"identity": lambda tokens: tokens, "pattern": _pattern}


class ChairScorer:
    """CHAIR over a synonym table.

    :param synonyms: ``{entry: node word}`` (see :func:`read_synonyms`).
    :param double_words: ``{"two words": node-or-word}`` merged before lookup.
    :param normaliser: a key of :data:`NORMALISERS` or a callable over the token list.
    :param tokenizer: callable ``str -> tokens`` (default :func:`simple_tokenize`).
    """

    def __init__(self, synonyms: dict[str, str], double_words: dict[str, str] | None = None,
                 normaliser: str | Callable = "identity", tokenizer: Callable[[str], list[str]] = simple_tokenize):
        self.synonyms, self.double_words = dict(synonyms), dict(double_words or {})
        if isinstance(normaliser, str):
            if normaliser not in NORMALISERS:
                raise ValueError(f"unknown normaliser '{normaliser}'; known: {', '.join(sorted(NORMALISERS))}")
            normaliser = NORMALISERS[normaliser]
        self.normalise, self.tokenize = normaliser, tokenizer

    def mentions(self, caption: str) -> tuple[list[str], list[str], list[str]]:
        """``(vocabulary words mentioned, their node words, merged tokens)`` of one caption."""
        tokens = self.normalise(self.tokenize(caption))
        merged, i = [], 0
        while i < len(tokens):
            pair = f"{tokens[i]} {tokens[i + 1]}" if i + 1 < len(tokens) else None
            if pair is not None and pair in self.double_words:
                merged.append(self.double_words[pair])
                i += 2
            else:
                merged.append(tokens[i])
                i += 1
        if "toilet" in merged and "seat" in merged:
            merged = [t for t in merged if t != "seat"]
        words = [t for t in merged if t in self.synonyms]
        return words, [self.synonyms[w] for w in words], merged

    def score(self, captions: Iterable[tuple[object, str]], gt: dict[object, set[str]]) -> dict:
        """``captions``: ``(image_id, caption)``; ``gt``: ``{image_id: set of node words}`` -> CHAIR_s, CHAIR_i,
        recall, length (fractions x100), ``n`` and per-caption details."""
        n = hallucinated_caps = mentions = hallucinated = covered = gt_total = length = 0
        details = []
        for image_id, caption in captions:
            words, nodes, merged = self.mentions(caption)
            truth = set(gt.get(image_id, set()))
            bad = [nd for nd in nodes if nd not in truth]
            n += 1
            hallucinated_caps += bool(bad)
            mentions += len(nodes)
            hallucinated += len(bad)
            covered += len(truth & set(nodes))
            gt_total += len(truth)
            length += len(merged)
            details.append({"image_id": image_id, "mentions": nodes, "hallucinated": bad})
        if n == 0:
            raise ValueError("no captions to score")
        return {"chair_s": 100 * hallucinated_caps / n, "chair_i": 100 * hallucinated / mentions if mentions else 0.0,
                "recall": 100 * covered / gt_total if gt_total else 0.0, "length": length / n, "n": n,
                "mentions": mentions, "details": details}
