"""Model aliases: the families' short names for the checkpoints researchers use, plus the built-in trained model.

``--model`` takes an alias, a hub id, or a local folder in the ``save_pretrained`` layout. :func:`resolve` gives what
the loader takes; :func:`identity` gives what the weights *are* — the canonical checkpoint and family that presets
are looked up by, the same for every alias and path of one checkpoint (:mod:`hallufix.config.identity`).
"""
from __future__ import annotations

from pathlib import Path

from hallufix.models.families import ALIASES as FAMILY_ALIASES

#: alias -> hub id: each family's aliases (:mod:`hallufix.models.families`).
ALIASES: dict[str, str] = dict(FAMILY_ALIASES)
#: The built-in shapes model, a checkpoint of the ``llava`` family shipped inside the package.
BUILTIN_NAMES = ("builtin", "shapes-llava")
DEFAULT_MODEL = "builtin"


def resolve(spec: str | None) -> str:
    """Alias / ``builtin`` / hub id / folder -> what ``from_pretrained`` takes."""
    spec = spec or DEFAULT_MODEL
    if spec in BUILTIN_NAMES:
        from hallufix.builtin import BUILTIN_MODEL_DIR

        return str(BUILTIN_MODEL_DIR)
    if spec in ALIASES:
        return ALIASES[spec]
    return str(Path(spec).expanduser()) if Path(spec).expanduser().exists() else spec


def identity(spec: str | None):
    """The canonical :class:`~hallufix.config.identity.ModelIdentity` of ``spec`` (reads ``config.json`` only, so it
    is known before any weights load): ``builtin``, ``shapes-llava`` and the built-in folder are one checkpoint."""
    from hallufix.config.identity import identify

    return identify(spec)
