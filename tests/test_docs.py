"""Docs stay in step with the code: every hookspec and every hook-point kind is documented with its signature."""
from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import hallufix.events as ev
import hallufix.hookspecs as hs
from hallufix.points import KINDS, LAYER_KINDS, SUBMODEL_KINDS, point_name

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_hookspec_has_a_section_with_its_signature():
    text = (DOCS / "hooks.md").read_text()
    for name, fn in inspect.getmembers(hs, inspect.isfunction):
        if name.startswith("hallufix_"):
            assert f"## `{name}{inspect.signature(fn)}`" in text, f"docs/hooks.md lacks {name}"


def test_every_hook_point_name_is_documented():
    text = (DOCS / "hooks.md").read_text()
    for kind in KINDS:
        name = point_name(kind, "{i}" if kind in LAYER_KINDS or kind in SUBMODEL_KINDS else None)
        assert f"`{name}`" in text, f"docs/hooks.md lacks {name}"


def test_hook_sections_are_the_hookspec_docstrings():
    """docs/hooks.md's generated parts are up to date (regenerate with ``python scripts/hooks_doc.py``)."""
    text = (DOCS / "hooks.md").read_text()
    assert inspect.getdoc(hs).strip() in text, "docs/hooks.md's lifecycle block differs from hookspecs.py"
    for name, fn in inspect.getmembers(hs, inspect.isfunction):
        if name.startswith("hallufix_"):
            assert f"## `{name}{inspect.signature(fn)}`\n\n{inspect.getdoc(fn).strip()}\n" in text, \
                f"docs/hooks.md's section of {name} differs from its docstring in hookspecs.py"


def _attributes(cls) -> set[str]:
    """Public names of an event class: class attributes, properties, methods, and ``self.x`` set in its code."""
    names = {n for n in dir(cls) if not n.startswith("_")}
    names |= set(getattr(cls, "__dataclass_fields__", {}))
    for klass in cls.__mro__:
        if klass.__module__.startswith("hallufix"):
            src = inspect.getsource(klass)
            names |= set(re.findall(r"self\.([a-z]\w*)\s*(?:,\s*self\.\w+\s*)*[:=,]", src))
            for lhs in re.findall(r"^\s*((?:self\.\w+\s*,\s*)+self\.\w+)\s*=", src, re.M):
                names |= set(re.findall(r"self\.(\w+)", lhs))
    return names


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_event_attribute_named_in_the_hook_docs_exists():
    """``event.X`` in docs/hooks.md exists on some event class; ``batch.X`` on BatchInfo, ``forward.X`` on
    ForwardInfo."""
    text = (DOCS / "hooks.md").read_text()
    events = [c for _, c in inspect.getmembers(ev, inspect.isclass) if c.__module__ == ev.__name__]
    events += [_import(path) for path in re.findall(r":class:`(hallufix\.[\w.]+Event)`", text)]  # events elsewhere
    known = {"event": set().union(*(_attributes(c) for c in events)), "batch": _attributes(ev.BatchInfo),
             "forward": _attributes(ev.ForwardInfo)}
    missing = sorted({f"{obj}.{attr}" for obj, attr in re.findall(r"\b(event|batch|forward)\.([a-z_]\w*)", text)
                      if attr not in known[obj]})
    assert not missing, f"docs/hooks.md names attributes that do not exist: {missing}"


def test_readme_has_the_two_commands():
    readme = (DOCS.parent / "README.md").read_text()
    assert "hallufix run --plugins clva,ara" in readme
    assert "bash scripts/test.sh" in readme
    ci = (DOCS.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
