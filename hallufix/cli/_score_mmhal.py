"""``hallufix score mmhal`` (filled in below)."""
from __future__ import annotations


def register(ssub) -> None:
    return None
