"""Loading checkpoints (a local ``save_pretrained`` folder, or a hub id already in the local Hugging Face cache) and
their processors, without touching the network.

Resolution: a folder is used as is; a hub id is resolved to its snapshot folder with ``snapshot_download``:
from the local cache only when ``allow_download`` is false, downloading what is missing when it is true. Its
default (``None``) follows the environment like ``from_pretrained`` does: download unless ``HF_HUB_OFFLINE`` is
set (tests and CI set it, so they never touch the network). An id that cannot be resolved raises
:class:`ModelNotAvailableError`, whose message names the id and how to bring a local copy. The model class is ``AutoModelForImageTextToText`` (the
family's class from :mod:`hallufix.models.families` where Auto does not map it); the processor comes from
:func:`hallufix.models.processors.load_processor` (the family's own loader, else ``AutoProcessor``).

``MODEL_TYPE_FAMILY`` and ``family_of`` are re-exported from :mod:`hallufix.models.families`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from hallufix.models.families import FAMILIES, MODEL_CLASSES, MODEL_TYPE_FAMILY, family_of  # noqa: F401

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotAvailableError(RuntimeError):
    """The model's files are neither a local folder nor in the local Hugging Face cache (or are incomplete)."""


class UnsupportedModelError(ModelNotAvailableError, ValueError):
    """The checkpoint's ``model_type`` is outside the supported families."""


def _how_to(path_or_id: str) -> str:
    if Path(str(path_or_id)).expanduser().is_dir():  # a local folder: downloading its own path makes no sense
        return ("Copy the complete save_pretrained folder (config.json, the *.safetensors weights and their index, "
                "the tokenizer and processor files) and pass that folder to --model.")
    return (f"On a machine with internet run `hf download {path_or_id} --local-dir /path/to/folder` (huggingface_hub's "
            f"CLI), copy the folder here and pass --model /path/to/folder (or point HF_HOME at a cache that holds it).")


def downloads_allowed(allow_download: bool | None) -> bool:
    """``allow_download`` if given, else true unless the environment sets ``HF_HUB_OFFLINE``."""
    if allow_download is not None:
        return bool(allow_download)
    from huggingface_hub import constants

    return not constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else not constants.HF_HUB_OFFLINE


def resolve_local(path_or_id: str | Path, *, allow_download: bool | None = None) -> Path:
    """The local folder holding ``path_or_id``: the folder itself, or the hub snapshot (see the module docstring
    for when it downloads). Raises :class:`ModelNotAvailableError` when it cannot be had."""
    folder = Path(path_or_id).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelNotAvailableError(f"{folder} has no config.json: not a save_pretrained model folder")
        return folder
    from huggingface_hub import snapshot_download

    try:
        snap = Path(snapshot_download(str(path_or_id), local_files_only=not downloads_allowed(allow_download)))
    except Exception as exc:  # not cached (LocalEntryNotFoundError), invalid id (HFValidationError), network error
        raise ModelNotAvailableError(
            f"model '{path_or_id}' is neither a local folder nor in the local Hugging Face cache "
            f"({type(exc).__name__}). {_how_to(str(path_or_id))}") from None
    if not (snap / "config.json").is_file():
        raise ModelNotAvailableError(f"model '{path_or_id}' is only partly cached ({snap} has no config.json). "
                                     f"{_how_to(str(path_or_id))}")
    return snap


def _model_class(model_type: str):
    import transformers
    from transformers import AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    return getattr(transformers, MODEL_CLASSES[model_type])


def load_pretrained(path_or_id: str | Path, *, dtype: str = "auto", device: str = "cpu",
                    attn_implementation: str = "sdpa", allow_download: bool | None = None):
    """``(model, processor)`` from a local folder or a cached hub id; the model in eval mode on ``device``.

    ``dtype``: ``"float32"`` / ``"bfloat16"`` / ``"float16"``, or ``"auto"`` = the checkpoint's dtype, except on
    CPU where ``"auto"`` means float32 (CPU half-precision matmuls are slow and lossy). The processor's tokenizer
    pads on the left. Raises :class:`ModelNotAvailableError` for an unavailable id or an incomplete folder and
    ``ValueError`` for a model type outside the registered families."""
    from hallufix.models.processors import load_processor

    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {', '.join(DTYPES)}, not '{dtype}'")
    folder = resolve_local(path_or_id, allow_download=allow_download)
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as exc:
        raise ModelNotAvailableError(f"{folder / 'config.json'} is not a valid JSON config ({exc}) — copy the "
                                     f"model folder again") from None
    if model_type not in MODEL_TYPE_FAMILY:
        raise UnsupportedModelError(f"'{path_or_id}' has model_type '{model_type}', which hallufix does not support — "
                                    f"use a {' / '.join(f.display_name for f in FAMILIES.values())} checkpoint "
                                    f"(model_type {', '.join(MODEL_TYPE_FAMILY)})")
    if dtype == "auto":
        torch_dtype = torch.float32 if str(device) == "cpu" else "auto"
    else:
        torch_dtype = DTYPES[dtype]
    try:
        model = _model_class(model_type).from_pretrained(str(folder), dtype=torch_dtype, local_files_only=True,
                                                         attn_implementation=attn_implementation)
        processor = load_processor(folder, family=MODEL_TYPE_FAMILY[model_type])
    except OSError as exc:  # missing weight / tokenizer files in the folder or cache snapshot
        raise ModelNotAvailableError(f"could not load '{path_or_id}' from {folder}: {str(exc).rstrip('.')} — "
                                     f"{_how_to(str(path_or_id))}") from None
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError" and "deserializ" not in str(exc):
            raise
        raise ModelNotAvailableError(f"the weights in {folder} are corrupt or truncated ({exc}) — "
                                     f"{_how_to(str(path_or_id))}") from None
    return model.to(device).eval(), processor
