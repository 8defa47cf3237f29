"""Registration of the AMBER, HallusionBench and MMHal-Bench scorers (filled in below)."""
from __future__ import annotations


def register(ssub) -> None:
    return None
