"""Derive hallufix's packaged WordNet 3.0 lemma data from a WordNet 3.0 database folder.

    python scripts/build_wordnet_data.py /usr/share/wordnet   # Debian's wordnet-base (or nltk_data/corpora/wordnet)

Writes ``hallufix/scoring/data/wordnet-3.0-morphy.txt.gz``: for each part of speech (n, v, a, r) the lemmas of
``index.<pos>`` (one per line, file order) and the lines of ``<pos>.exc`` (inflected form, then its base forms) —
all that NLTK's ``WordNetLemmatizer`` consults — and ``WORDNET-LICENSE.txt``, the WordNet 3.0 licence taken from
the header of ``index.noun``. The gzip stream carries no timestamp, so the output is byte-reproducible.
"""
from __future__ import annotations

import gzip
import re
import sys
from pathlib import Path

POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
OUT = Path(__file__).resolve().parents[1] / "hallufix" / "scoring" / "data"


def main(folder: str) -> None:
    src = Path(folder)
    lines = ["# WordNet 3.0 lemma index and morphological exception lists (Princeton University; licence in",
             "# WORDNET-LICENSE.txt beside this file), derived from the database files index.{noun,verb,adj,adv}",
             "# and {noun,verb,adj,adv}.exc by scripts/build_wordnet_data.py. Sections: '@index <pos>' (one lemma a",
             "# line) and '@exc <pos>' (an inflected form, then its base forms)."]
    licence = []
    for pos, name in POS_FILES.items():
        text = (src / f"index.{name}").read_text(encoding="utf-8").replace("\r\n", "\n")
        if pos == "n":
            licence = [re.sub(r"^\s*\d+ ?", "", ln).rstrip() for ln in text.splitlines() if ln.startswith("  ")]
        lines.append(f"@index {pos}")
        lines += [ln.split(" ", 1)[0] for ln in text.splitlines() if ln and not ln[0].isspace()]
        lines.append(f"@exc {pos}")
        lines += [" ".join(ln.split()) for ln in (src / f"{name}.exc").read_text(encoding="utf-8").splitlines()
                  if ln.strip()]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    with open(OUT / "wordnet-3.0-morphy.txt.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                                              compresslevel=9, filename="") as f:
        f.write(data)
    (OUT / "WORDNET-LICENSE.txt").write_text("\n".join(licence).strip() + "\n", encoding="utf-8")
    print(f"{len(data)} bytes of lemma data -> {(OUT / 'wordnet-3.0-morphy.txt.gz').stat().st_size} bytes gzipped")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/wordnet")
