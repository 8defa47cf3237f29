"""WordNet 3.0 lemmatisation read straight from the WordNet database files (no NLTK, no download).

Only the ``index.{noun,verb,adj,adv}`` files (which lemmas exist per part of speech) and the
``{noun,verb,adj,adv}.exc`` exception lists are read. :func:`lemmatize` behaves as NLTK's
``WordNetLemmatizer.lemmatize(word, pos)``: WordNet's *morphy* (exception list first; else the word itself and
the one-step suffix substitutions that are in the database; else keep applying the substitutions), then the
shortest candidate, the first one on a tie (so ``men`` stays ``men``: both ``men`` and ``man`` are nouns), or the
word unchanged when nothing is found.

Where the files are: ``$HALLUFIX_WORDNET``, else Debian's ``/usr/share/wordnet`` (package ``wordnet-base``), else
an NLTK data folder ``nltk_data/corpora/wordnet``. Install on Debian/Ubuntu with ``apt-get install wordnet-base``.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
SUBSTITUTIONS = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}


class WordNetMissing(RuntimeError):
    """The WordNet database files are not installed; the message says how to install them."""


def candidate_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("HALLUFIX_WORDNET"):
        dirs.append(Path(os.environ["HALLUFIX_WORDNET"]))
    dirs.append(Path("/usr/share/wordnet"))
    nltk_roots = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    nltk_roots += [str(Path.home() / "nltk_data"), "/usr/share/nltk_data", "/usr/local/share/nltk_data",
                   "/usr/lib/nltk_data", "/usr/local/lib/nltk_data"]
    dirs += [Path(r) / "corpora" / "wordnet" for r in nltk_roots]
    return dirs


def find_wordnet() -> Path:
    """The first folder holding ``index.noun`` and ``noun.exc``; :class:`WordNetMissing` if none."""
    for d in candidate_dirs():
        if (d / "index.noun").is_file() and (d / "noun.exc").is_file():
            return d
    raise WordNetMissing(
        "WordNet 3.0 database files not found (looked in " + ", ".join(str(d) for d in candidate_dirs()) +
        "); the nltk CHAIR normaliser needs them: `apt-get install wordnet-base` (Debian/Ubuntu), or set "
        "HALLUFIX_WORDNET to a folder holding index.noun, noun.exc, ...; or use the pattern normaliser")


class WordNet:
    """Lemma sets and exception lists of one WordNet database folder."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.lemmas: dict[str, frozenset[str]] = {}
        self.exceptions: dict[str, dict[str, list[str]]] = {}
        for pos, name in POS_FILES.items():
            with open(folder / f"index.{name}", encoding="utf-8") as f:
                self.lemmas[pos] = frozenset(line.split(" ", 1)[0] for line in f if line and not line[0].isspace())
            exc: dict[str, list[str]] = {}
            exc_path = folder / f"{name}.exc"
            if exc_path.is_file():
                for line in exc_path.read_text(encoding="utf-8").splitlines():
                    terms = line.split()
                    if terms:
                        exc[terms[0]] = terms[1:]
            self.exceptions[pos] = exc

    def morphy(self, form: str, pos: str) -> list[str]:
        """Base forms of ``form`` in the database, in WordNet's order (empty if none)."""
        known, subs = self.lemmas[pos], SUBSTITUTIONS[pos]

        def keep(forms):
            seen: list[str] = []
            for f in forms:
                if f in known and f not in seen:
                    seen.append(f)
            return seen

        def step(forms):
            return [f[: -len(old)] + new for f in forms for old, new in subs if f.endswith(old)]

        if form in self.exceptions[pos]:
            return keep([form] + self.exceptions[pos][form])
        forms = step([form])
        found = keep([form] + forms)
        while not found and forms:
            forms = step(forms)
            found = keep(forms)
        return found

    def lemmatize(self, word: str, pos: str = "n") -> str:
        """NLTK's ``WordNetLemmatizer.lemmatize``: the shortest morphy candidate (first on a tie), else ``word``."""
        found = self.morphy(word, pos)
        return min(found, key=len) if found else word


@functools.lru_cache(maxsize=4)
def load(folder: str | None = None) -> WordNet:
    """The WordNet database at ``folder`` (default: :func:`find_wordnet`), read once per process (~1 s)."""
    return WordNet(folder or find_wordnet())
