"""``hallufix.testing``: an opt-in pytest plugin for method authors (``pytest -p hallufix.testing`` or
``pytest_plugins = ["hallufix.testing"]``).

Fixtures: ``tiny_session(family)`` (factory), ``tiny_images``. Helpers: :class:`MethodContract` (the contract
suite), :func:`hook_snapshot` / :func:`assert_no_hook_leaks`, :class:`HookRecorder`.
Importing this module imports no torch; fixtures build models lazily.
"""
from __future__ import annotations

import pytest

TINY_FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl", "instructblip")


def __getattr__(name):
    import importlib

    where = {"MethodContract": "contract", "hook_snapshot": "leaks", "assert_no_hook_leaks": "leaks",
             "HookRecorder": "recorder", "tiny_images": "models"}
    if name in where:
        return getattr(importlib.import_module(f"hallufix.testing.{where[name]}"), name)
    if name == "tiny_session_factory":
        from hallufix.testing.models import tiny_session

        return tiny_session
    raise AttributeError(name)


@pytest.fixture(scope="session")
def tiny_session():
    """Factory: ``tiny_session("llava")`` -> a cached :class:`~hallufix.api.Session` over a tiny random model."""
    from hallufix.testing.models import tiny_session as factory

    return factory


@pytest.fixture(scope="session")
def tiny_images():
    from hallufix.testing.models import tiny_images as factory

    return factory
