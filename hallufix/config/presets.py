"""Method presets: ``<method package>/presets/<stem>.yaml``, the paper setting for a checkpoint or a family, saying
only what differs from the method's ``Config`` defaults.

Lookup order for a model (:meth:`hallufix.config.identity.ModelIdentity.preset_names`): a preset named
explicitly; the checkpoint's own file (``builtin.yaml``; a hub id with ``/`` written ``--``, e.g.
``llava-hf--llava-1.5-7b-hf.yaml``); the family's (``llava.yaml``); one the family shares with a sibling
(``qwen.yaml`` for Qwen2-VL and Qwen2.5-VL). Every alias and path of the same weights has the same identity, so
it gets the same preset.
"""
from __future__ import annotations

import sys
from pathlib import Path

from hallufix.config.identity import ModelIdentity, identify


def preset_folder(cls: type) -> Path | None:
    """The ``presets/`` folder beside the module that defines ``cls`` (it may not exist)."""
    module = sys.modules.get(cls.__module__)
    if module is None or not getattr(module, "__file__", None):
        return None
    return Path(module.__file__).parent / "presets"


def as_identity(model: ModelIdentity | str | None) -> ModelIdentity | None:
    """``model`` as a :class:`ModelIdentity` (a string is identified by :func:`identify`; ``None`` stays)."""
    if model is None or isinstance(model, ModelIdentity):
        return model
    return identify(model)


def preset_names(family: str | None, model: ModelIdentity | str | None = None,
                 preset: str | None = None) -> list[str]:
    """Stems in lookup order for ``model`` (an identity or a ``--model`` string) of ``family`` (which wins over
    the identity's family when given: the loaded model's)."""
    from hallufix.models.families import preset_names as family_presets

    ident = as_identity(model)
    names = [preset] if preset else []
    if ident is not None and ident.preset_stem:
        names.append(ident.preset_stem)
    names += family_presets(family or (ident.family if ident is not None else None))
    return list(dict.fromkeys(names))


def preset_path(cls: type, family: str | None = None, preset: str | None = None,
                model: ModelIdentity | str | None = None) -> Path | None:
    """The YAML preset for method class ``cls`` on ``model`` of ``family`` (module docstring), or ``None``."""
    folder = preset_folder(cls)
    if folder is None:
        return None
    for name in preset_names(family, model, preset):
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    return None
