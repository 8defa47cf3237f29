"""Docs stay in step with the code: every hookspec and every hook-point kind is documented with its signature."""
from __future__ import annotations

import inspect
from pathlib import Path

import hallufix.hookspecs as hs
from hallufix.points import _TEMPLATES

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_hookspec_has_a_section_with_its_signature():
    text = (DOCS / "hooks.md").read_text()
    for name, fn in inspect.getmembers(hs, inspect.isfunction):
        if name.startswith("hallufix_"):
            assert f"## `{name}{inspect.signature(fn)}`" in text, f"docs/hooks.md lacks {name}"


def test_every_hook_point_name_is_documented():
    text = (DOCS / "hooks.md").read_text()
    for template in _TEMPLATES.values():
        assert f"`{template}`" in text, f"docs/hooks.md lacks {template}"


def test_readme_has_the_two_commands():
    readme = (DOCS.parent / "README.md").read_text()
    assert "hallufix run --plugins clva,ara" in readme
    assert "bash scripts/test.sh" in readme
    ci = (DOCS.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
