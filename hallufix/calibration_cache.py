"""The calibration phase's on-disk cache: statistics a method computes once over a calibration set before a
benchmark (FHI's thresholds, steering vectors, a guard's quartile), keyed by what they depend on.

The key is the sha256 of canonical JSON over three parts:

* ``model``: :func:`model_key` — the model's identity (:func:`hallufix.provenance.model_identity`: resolved
  target, family, revision, a local folder's weight fingerprint) plus a probe of the loaded weights (every
  parameter's name, shape and dtype, and the float64 sums of the first and last parameter), so two random tiny models
  or a re-trained checkpoint under the same name get different keys;
* ``method``: the method name, the config it calibrates with (a dict) and the sha256 of the source files of its
  calibration code (``code``: editing the code invalidates its entries);
* ``calibration``: the calibration set and settings (task, options, the samples' hash, counts, targets).

Entries are ``<root>/<method>/<key>.json`` holding ``{"key": {the three parts}, "value": ..., "created": ...}``,
written atomically (temp file + rename); a value is JSON. The root is ``$HALLUFIX_CACHE_DIR`` or
``~/.cache/hallufix/calibration``. A corrupt entry is reported and recomputed, never trusted.

    cache = CalibrationCache()
    value, hit = cache.get_or_compute(model_key(session, "builtin"), "fhi", config, calibration, compute)
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable


def default_root() -> Path:
    env = os.environ.get("HALLUFIX_CACHE_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hallufix" / "calibration"


def model_key(session, spec_model: str) -> dict:
    """The model part of a key: the provenance identity and a cheap probe of the loaded weights (see the module
    docstring). Computed on the model's device; costs two reductions."""
    import torch

    from hallufix.provenance import model_identity

    ident = model_identity(session, spec_model)
    ident.pop("name", None)  # the alias typed is not the model: the same weights under two aliases share a key
    named = list(session.model.named_parameters())
    h = hashlib.sha256()
    for name, p in named:
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}\n".encode())
    with torch.no_grad():
        sums = [float(named[i][1].double().sum()) for i in (0, -1)] if named else []
    return {**ident, "parameters_sha256": h.hexdigest(), "probe_sums": sums}


def code_hash(*modules) -> str:
    """sha256 over the source files of ``modules`` (module objects or dotted names), in the order given."""
    import importlib

    h = hashlib.sha256()
    for m in modules:
        mod = importlib.import_module(m) if isinstance(m, str) else m
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()


def key_of(model: dict, method: str, config: dict, calibration: dict) -> tuple[dict, str]:
    """``(parts, sha256 hex)`` of a cache key (``config`` may carry a ``code`` entry from :func:`code_hash`)."""
    parts = {"model": model, "method": {"name": method, "config": config}, "calibration": calibration}
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return parts, hashlib.sha256(text.encode()).hexdigest()


class CalibrationCache:
    """Read / write calibration results under ``root`` (default :func:`default_root`)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()

    def path(self, method: str, digest: str) -> Path:
        return self.root / method / f"{digest}.json"

    def get(self, model: dict, method: str, config: dict, calibration: dict) -> Any | None:
        """The cached value, or ``None`` when there is none (or the entry is unreadable / for another key)."""
        parts, digest = key_of(model, method, config, calibration)
        path = self.path(method, digest)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"hallufix: calibration cache entry {path} is unreadable ({type(exc).__name__}); recomputing",
                  file=sys.stderr)
            return None
        if json.loads(json.dumps(parts, default=str)) != entry.get("key"):
            return None  # a hash collision or a hand-edited file: never trust it
        return entry.get("value")

    def put(self, model: dict, method: str, config: dict, calibration: dict, value: Any) -> Path:
        """Store ``value`` (JSON-serialisable) atomically; returns the entry's path."""
        from datetime import datetime, timezone

        parts, digest = key_of(model, method, config, calibration)
        path = self.path(method, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": parts, "value": value, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry, indent=1, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def get_or_compute(self, model: dict, method: str, config: dict, calibration: dict,
                       compute: Callable[[], Any], refresh: bool = False) -> tuple[Any, bool]:
        """``(value, hit)``: the cached value for the key (``hit=True``), else ``compute()`` stored and returned.
        ``refresh=True`` recomputes and overwrites."""
        if not refresh:
            value = self.get(model, method, config, calibration)
            if value is not None:
                return value, True
        value = compute()
        self.put(model, method, config, calibration, json.loads(json.dumps(value, default=float)))
        return json.loads(json.dumps(value, default=float)), False
