"""The canonical identity of a model — what presets are looked up by — computed before any weights load.

Every way of naming the same weights gives the same :class:`ModelIdentity`: ``builtin``, its alias
``shapes-llava``, its folder path and a copy of that folder are all checkpoint ``builtin``; ``llava-1.5``,
``llava-hf/llava-1.5-7b-hf`` and that repository's snapshot folder in the Hugging Face cache are all checkpoint
``llava-hf/llava-1.5-7b-hf``. Only ``config.json`` is read (never the weights):

1. ``builtin`` / ``shapes-llava``, or a folder holding the shipped built-in checkpoint (same ``config.json`` and
   weight file names and sizes) -> ``builtin``;
2. an alias -> its hub id, then as a hub id;
3. a folder: a Hugging Face cache snapshot (``.../models--ORG--NAME/snapshots/REV``) -> ``ORG/NAME``; else a hub
   id recorded in its ``config.json`` (``_name_or_path``, written by older ``transformers``) -> that id; else the
   folder's absolute path (a local checkpoint of its own: only family presets apply);
4. a hub id -> itself; its family comes from its ``config.json`` in the local cache (``HF_HUB_OFFLINE``
   respected; when downloads are allowed, just ``config.json`` is fetched). **A bare hub id with no cached
   config and no network falls back to the id itself**, with the family of the alias that names it if one does
   (``Qwen/Qwen2-VL-7B-Instruct``), else unknown (then no family preset applies; loading it would fail anyway
   without the network).

The family is the registry's (:data:`hallufix.models.families.MODEL_TYPE_FAMILY`) for ``config.json``'s
``model_type``; ``None`` when there is no readable config or the type is unsupported (the loader says so).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

BUILTIN_CHECKPOINT = "builtin"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelIdentity:
    """A model as weights, not as typed.

    Attributes:
        checkpoint: the canonical checkpoint id: ``builtin``, a hub id (``org/name``) or an absolute folder path.
        family: the registry family (``llava``, ``qwen2-vl``, ...) or ``None`` when unknown before loading.
        target: what the loader is given (a folder, or a hub id).
        source: how ``checkpoint`` was found: ``builtin``, ``alias``, ``hub-cache``, ``config``, ``folder``,
            ``hub-id`` or ``loaded`` (a model built in memory).
    """

    checkpoint: str
    family: str | None
    target: str
    source: str

    @property
    def preset_stem(self) -> str | None:
        """The file stem of this checkpoint's own preset (``builtin``, ``llava-hf--llava-1.5-7b-hf``: ``/`` as the
        Hugging Face cache writes it, ``--``); ``None`` for a local folder of its own (family presets only)."""
        if self.source in ("folder", "loaded"):
            return None
        return self.checkpoint.replace("/", "--")

    def preset_names(self) -> tuple[str, ...]:
        """Preset file stems in lookup order: the checkpoint's own, then the family's (and a shared sibling's)."""
        from hallufix.models.families import preset_names

        own = (self.preset_stem,) if self.preset_stem else ()
        return own + tuple(preset_names(self.family))


def _read_config(folder: Path) -> dict:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _family(config: dict) -> str | None:
    from hallufix.models.families import MODEL_TYPE_FAMILY

    return MODEL_TYPE_FAMILY.get(config.get("model_type"))


def _fingerprint(folder: Path) -> tuple:
    """``config.json``'s bytes and the weight files' names and sizes: equal for copies of one checkpoint."""
    try:
        weights = sorted((f.name, f.stat().st_size) for f in folder.iterdir()
                         if f.suffix in (".safetensors", ".bin"))
        return (folder / "config.json").read_bytes(), tuple(weights)
    except OSError:
        return (None, ())


def _is_builtin(folder: Path) -> bool:
    from hallufix.builtin import BUILTIN_MODEL_DIR

    if folder.resolve() == BUILTIN_MODEL_DIR.resolve():
        return True
    if not (folder / "config.json").is_file() or not (BUILTIN_MODEL_DIR / "config.json").is_file():
        return False
    return _fingerprint(folder) == _fingerprint(BUILTIN_MODEL_DIR)


def _cached_config(repo_id: str) -> dict:
    """A hub repository's ``config.json`` from the local cache, or fetched alone when downloads are allowed."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, "config.json")
        if not isinstance(path, str):
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:
                return {}
            path = hf_hub_download(repo_id, "config.json")
        return _read_config(Path(path).parent)
    except Exception:  # an invalid id, no network: the id itself is the identity (module docstring, step 4)
        return {}


def _hub(repo_id: str, source: str) -> ModelIdentity:
    """A hub id: the family from its cached ``config.json``, else from the alias table (an id an alias names)."""
    from hallufix.models.families import FAMILIES

    config = _cached_config(repo_id) if _HUB_ID.match(repo_id) else {}
    known = next((f.name for f in FAMILIES.values() if repo_id in f.aliases.values()), None)
    return ModelIdentity(repo_id, _family(config) or known, repo_id, source)


def identify(spec: str | Path | None) -> ModelIdentity:
    """The :class:`ModelIdentity` of ``--model`` ``spec`` (alias, ``builtin``, hub id or folder; ``None`` is the
    built-in), reading ``config.json`` only. See the module docstring for the rules."""
    from hallufix.models.registry import ALIASES, BUILTIN_NAMES, DEFAULT_MODEL

    spec = str(spec) if spec else DEFAULT_MODEL
    if spec in BUILTIN_NAMES:
        from hallufix.builtin import BUILTIN_MODEL_DIR

        return ModelIdentity(BUILTIN_CHECKPOINT, _family(_read_config(BUILTIN_MODEL_DIR)) or "llava",
                             str(BUILTIN_MODEL_DIR), "builtin")
    if spec in ALIASES:
        return _hub(ALIASES[spec], "alias")
    folder = Path(spec).expanduser()
    if folder.is_dir():
        folder = folder.resolve()
        config = _read_config(folder)
        family = _family(config)
        if _is_builtin(folder):
            return ModelIdentity(BUILTIN_CHECKPOINT, family, str(folder), "builtin")
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
            repo = folder.parent.parent.name[len("models--"):].replace("--", "/", 1)
            return ModelIdentity(repo, family, str(folder), "hub-cache")
        named = config.get("_name_or_path")
        if isinstance(named, str) and _HUB_ID.match(named) and not Path(named).expanduser().exists():
            return ModelIdentity(named, family, str(folder), "config")
        return ModelIdentity(str(folder), family, str(folder), "folder")
    return _hub(spec, "hub-id")


def identify_loaded(model, name: str = "") -> ModelIdentity:
    """The identity of a model already in memory (a :class:`~hallufix.api.Session` built around it): from
    ``name`` when it names a checkpoint (``builtin``, an alias, a folder), else from the loaded config."""
    from hallufix.models.families import MODEL_TYPE_FAMILY
    from hallufix.models.registry import ALIASES, BUILTIN_NAMES

    config = getattr(model, "config", None)
    family = MODEL_TYPE_FAMILY.get(getattr(config, "model_type", None))
    if name and (name in BUILTIN_NAMES or name in ALIASES or Path(name).expanduser().is_dir()):
        ident = identify(name)
        if ident.family in (None, family):
            return ModelIdentity(ident.checkpoint, family, ident.target, ident.source)
    named = getattr(config, "_name_or_path", "") or ""
    if named and Path(named).expanduser().is_dir():
        return identify(named)
    return ModelIdentity(named or name, family, named or name, "hub-id" if _HUB_ID.match(named) else "loaded")
