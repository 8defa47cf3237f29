"""``hallufix --version``: hallufix, torch, transformers, and every discovered plugin."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _v(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def print_versions() -> int:
    from hallufix import __version__
    from hallufix.plugins import discover

    print(f"hallufix {__version__} (torch {_v('torch')}, transformers {_v('transformers')})")
    reg = discover()
    for name in reg.names():
        m = reg.methods[name]
        print(f"  plugin {name} {m.version} from {m.dist}")
    for ep, err in sorted(reg.errors.items()):
        print(f"  plugin {ep}: failed to load: {err}")
    return 0
