"""Regenerate the generated parts of docs/hooks.md from hallufix/hookspecs.py: the lifecycle block (the module
docstring, in the first ```text fence) and one ``## `hallufix_<hook>(<signature>)` `` section per hookspec (its
docstring), in name order. The hand-written parts (the introduction, "Declaring hook points" and everything from
"## Visual tokens of a batch" on) are kept as they are. ``tests/test_docs.py`` checks the result.

    python scripts/hooks_doc.py            # rewrite docs/hooks.md in place
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import hallufix.hookspecs as hs

DOC = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"


def render(text: str) -> str:
    head = text[:text.index("```text")]
    declare = text[text.index("## Declaring hook points"):]
    declare = declare[:re.search(r"^## `hallufix_", declare, re.M).start()]
    tail = text[text.index("## Visual tokens of a batch"):]
    parts = [head, "```text\n", inspect.getdoc(hs).strip(), "\n```\n\n", declare]
    for name, fn in sorted(inspect.getmembers(hs, inspect.isfunction)):
        if name.startswith("hallufix_"):
            parts.append(f"## `{name}{inspect.signature(fn)}`\n\n{inspect.getdoc(fn).strip()}\n\n")
    return "".join(parts + [tail])


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text()))
