"""The supported model families, one module each (:mod:`.llava`, :mod:`.qwen` for Qwen2-VL and Qwen2.5-VL,
:mod:`.instructblip`), and the registry everything else derives from: ``model_type`` -> family, adapters,
aliases, chat templates, model classes, tiny builders, preset names and :class:`Capabilities`.

Importing this package imports nothing heavy (no torch, no transformers): adapters and builders import them where
they run.
"""
from __future__ import annotations

from hallufix.models.families import instructblip, llava, qwen
from hallufix.models.families.spec import Capabilities, Family

#: family name -> :class:`Family`, in the order the docs list them.
FAMILIES: dict[str, Family] = {f.name: f for f in (llava.FAMILY, qwen.QWEN2_VL, qwen.QWEN25_VL, instructblip.FAMILY)}
#: ``config.model_type`` -> family name.
MODEL_TYPE_FAMILY: dict[str, str] = {mt: f.name for f in FAMILIES.values() for mt in f.model_types}
#: ``config.model_type`` -> model class name in ``transformers``.
MODEL_CLASSES: dict[str, str] = {mt: cls for f in FAMILIES.values() for mt, cls in f.model_types.items()}
#: ``--model`` alias -> hub id, over every family.
ALIASES: dict[str, str] = {a: hub for f in FAMILIES.values() for a, hub in f.aliases.items()}

__all__ = ["ALIASES", "Capabilities", "FAMILIES", "Family", "MODEL_CLASSES", "MODEL_TYPE_FAMILY", "adapter_for",
           "family", "family_of", "family_of_processor"]


def family(name: str) -> Family:
    """The :class:`Family` called ``name``; ``ValueError`` naming the supported ones otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family '{name}'; supported: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of(model_or_config) -> str:
    """``llava``, ``qwen2-vl``, ``qwen2.5-vl`` or ``instructblip`` from ``config.model_type`` of a model or config."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_TYPE_FAMILY:
        raise ValueError(f"unsupported model_type '{model_type}'; supported: {', '.join(MODEL_TYPE_FAMILY)}")
    return MODEL_TYPE_FAMILY[model_type]


def family_of_processor(processor_class: str | None) -> str | None:
    """The family whose checkpoints save ``processor_class`` (the first that does), or ``None``."""
    return next((f.name for f in FAMILIES.values() if processor_class in f.processor_classes), None)


def adapter_for(model):
    """The family adapter for a loaded model, from ``config.model_type``."""
    mt = model.config.model_type
    if mt not in MODEL_TYPE_FAMILY:
        raise ValueError(f"unsupported model type '{mt}'; hallufix supports {', '.join(sorted(MODEL_TYPE_FAMILY))}")
    return FAMILIES[MODEL_TYPE_FAMILY[mt]].adapter()


def capabilities(name: str) -> Capabilities:
    """The declared capabilities of family ``name``; a family outside the registry (a hand-built
    :class:`~hallufix.layout.ModelInfo`) gets the generic adapter's (spatial grid, several images)."""
    return FAMILIES[name].capabilities if name in FAMILIES else Capabilities()


def display_name(name: str) -> str:
    """How messages name family ``name`` (``"InstructBLIP"``); the name itself outside the registry."""
    return FAMILIES[name].display_name if name in FAMILIES else name


def preset_names(name: str | None) -> tuple[str, ...]:
    """Preset file stems for family ``name`` in lookup order (its own, then one shared with a sibling family)."""
    if not name:
        return ()
    return FAMILIES[name].presets() if name in FAMILIES else (name,)
