"""``hallufix.testing``: an opt-in pytest plugin for method authors (``pytest -p hallufix.testing`` or
``pytest_plugins = ["hallufix.testing"]``).

Fixtures: ``tiny_session(family, shape=..., dtype=...)`` (factory), ``tiny_images`` (``mixed=True``: four sizes
and modes). Helpers: :class:`MethodContract` (the contract
suite), :func:`hook_snapshot` / :func:`assert_no_hook_leaks`, :class:`HookRecorder`.
Importing this module imports no torch; fixtures build models lazily. As a pytest plugin it sets torch's CPU
threads to ``$HALLUFIX_TEST_THREADS`` (default 1; ``auto`` leaves torch's choice) when the session starts: tiny
models are fastest on one thread, and on a machine whose cores are shared an oversubscribed OpenMP pool runs
them 10-100x slower. Models run on ``$HALLUFIX_TEST_DEVICE`` (default ``cpu``).
"""
from __future__ import annotations

import os

import pytest

from hallufix.models.families import FAMILIES

TINY_FAMILIES = tuple(FAMILIES)  # every registered family (hallufix.models.families)


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


def pytest_configure(config):
    import tempfile

    # calibration results of a test session go to a fresh folder: never read, never fill the user's cache
    os.environ.setdefault("HALLUFIX_CACHE_DIR", tempfile.mkdtemp(prefix="hallufix-calibration-"))
    threads = os.environ.get("HALLUFIX_TEST_THREADS", "1").strip()
    if threads != "auto":
        import torch

        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def tiny_session():
    """Factory: ``tiny_session("llava")`` -> a cached :class:`~hallufix.api.Session` over a tiny random model;
    ``tiny_session("qwen2.5-vl", shape="real", dtype="bfloat16")`` at the real 7B depth and head counts."""
    from hallufix.testing.models import tiny_session as factory

    return factory


@pytest.fixture(scope="session")
def tiny_images():
    from hallufix.testing.models import tiny_images as factory

    return factory
