"""Run identity and provenance: what makes a run's samples what they are, and what a reader needs to trust them.

* :func:`identity` — the keys that change a run's generated samples: model identity (resolved target, family,
  revision, weights fingerprint), method stack with each method's full config, task name, task options and a
  fingerprint of the task's files, the prompt template and its hash, the sample questions' hash, generation
  settings, dtype, device and seed. ``limit`` and ``batch_size`` are not part of it: a larger ``--limit`` resumes
  and extends a run (batched generation equals one-at-a-time generation), a smaller one reuses a prefix.
* :func:`identity_hash` — a short, stable hash of an identity (directory-name suffix, ``report``'s join key).
* :func:`identity_diff` — ``"key: old -> new"`` for the identity keys that differ (the resume refusal).
* :func:`provenance` — what lmms-eval records besides: command line, start / end time, the chat template text,
  package versions live in ``env.json``.
* :func:`check_same_run` / :func:`check_same_questions` — the resume refusals.
* :func:`seed_everything` — python ``random``, numpy and torch from one seed.

Paths and hashes only; no torch at import time. (Moves with the runner.)
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

#: identity keys in the order a refusal names them
IDENTITY_KEYS = ("model", "methods", "task", "task_options", "task_files", "prompt_template_sha256",
                 "questions_sha256", "generation", "dtype", "device", "seed")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_HASHED_FILES = 2000


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint_path(path: str | Path) -> dict:
    """``{"path", "sha256"}`` of a data file, or of a folder: the sha256 over every non-image file's relative name
    and content (at most :data:`MAX_HASHED_FILES`) plus the names and sizes of its images (hashing a COCO image
    folder's bytes would take minutes; a replaced image of another size is still caught)."""
    p = Path(path).expanduser()
    if p.is_file():
        return {"path": str(p), "sha256": sha256_file(p)}
    if not p.is_dir():
        return {"path": str(p), "sha256": None}
    h, n_files, n_images = hashlib.sha256(), 0, 0
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        rel = f.relative_to(p).as_posix()
        if f.suffix.lower() in IMAGE_SUFFIXES:
            h.update(f"{rel}\0{f.stat().st_size}\n".encode())
            n_images += 1
        elif n_files < MAX_HASHED_FILES:
            h.update(f"{rel}\0{sha256_file(f)}\n".encode())
            n_files += 1
    return {"path": str(p), "sha256": h.hexdigest(), "files_hashed": n_files, "images_listed": n_images}


def task_files(task_spec: str, options: dict) -> list[dict]:
    """Fingerprints of every file or folder the task was pointed at: the ``NAME:PATH`` argument and every task
    option whose value is an existing path (``image_root``, ``annotations``, ...)."""
    paths = []
    _, _, arg = task_spec.partition(":")
    if arg:
        paths.append(("path", arg))
    for key, value in sorted(options.items()):
        if isinstance(value, str) and value and ("/" in value or os.sep in value) and Path(value).expanduser().exists():
            paths.append((key, value))
    return [{"option": key, **fingerprint_path(value)} for key, value in paths]


def model_identity(session, spec_model: str) -> dict:
    """The model as weights, not as typed: resolved target, family, revision and a fingerprint of a local folder's
    config and weight files (names + sizes; the same weights under two aliases give the same fingerprint)."""
    from hallufix.models.registry import resolve

    target = resolve(spec_model)
    cfg = getattr(session.model, "config", None)
    out = {"name": spec_model, "target": str(target), "family": session.info.family,
           "name_or_path": getattr(cfg, "_name_or_path", None), "revision": getattr(cfg, "_commit_hash", None)}
    folder = Path(target)
    if folder.is_dir():
        h = hashlib.sha256()
        for f in sorted(folder.iterdir()):
            if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name.endswith("config.json")):
                h.update(f"{f.name}\0{f.stat().st_size}\n".encode())
                if f.suffix == ".json":
                    h.update(f.read_bytes())
        out["weights_sha256"] = h.hexdigest()
        out["target"] = folder.name  # the folder's name: the same checkout moved elsewhere keeps its identity
    return out


def prompt_template(session) -> dict:
    """The chat template applied to every question: the processor's template text (if any), the rendered prompt of
    a placeholder question, and the sha256 of both together."""
    proc = session.processor
    template = getattr(proc, "chat_template", None) or getattr(getattr(proc, "tokenizer", None), "chat_template",
                                                                None)
    try:
        rendered = session.adapter.prompt(proc, "{question}")
    except Exception as exc:  # a processor without a template: recorded, not fatal
        rendered = f"<unrenderable: {type(exc).__name__}>"
    template = template if isinstance(template, str) else json.dumps(template, sort_keys=True, default=str)
    return {"chat_template": template, "rendered": rendered,
            "sha256": sha256_text(f"{template}\0{rendered}")}


def questions_hash(samples) -> str:
    """sha256 over every sample's ``id``, question, gold answer and split, in order (a changed prompt option or
    task seed changes it even when the ids stay the same)."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.id, s.question, s.answer, s.split], default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def generation_settings(max_new_tokens: int) -> dict:
    """The decoding every run uses (:meth:`hallufix.api.MethodRun.generate`): greedy, one beam."""
    return {"do_sample": False, "num_beams": 1, "max_new_tokens": int(max_new_tokens), "min_new_tokens": 0,
            "decoding": "greedy"}


def identity(*, model: dict, methods: list[dict], task: str, task_options: dict, files: list[dict],
             template: dict, questions_sha256: str, generation: dict, dtype: str, device: str, seed: int) -> dict:
    """The identity record (see the module docstring); plain JSON."""
    ident = {"model": model, "methods": [{"name": m.get("name"), "config": m.get("config")} for m in methods],
             "task": task, "task_options": dict(sorted(task_options.items())),
             "task_files": [{"option": f["option"], "sha256": f["sha256"]} for f in files],
             "prompt_template_sha256": template["sha256"], "questions_sha256": questions_sha256,
             "generation": generation, "dtype": dtype, "device": device, "seed": seed}
    return json.loads(json.dumps(ident, default=str))


def identity_hash(ident: dict, length: int = 8) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:length]


def identity_diff(previous: dict, current: dict) -> list[str]:
    """``["key: old -> new", ...]`` for the identity keys that differ (values shortened)."""
    def short(v):
        text = json.dumps(v, sort_keys=True, default=str)
        return text if len(text) <= 80 else text[:77] + "..."

    keys = [k for k in IDENTITY_KEYS if previous.get(k) != current.get(k)]
    keys += sorted(k for k in set(previous) | set(current) if k not in IDENTITY_KEYS
                   and previous.get(k) != current.get(k))
    return [f"{k}: {short(previous.get(k))} -> {short(current.get(k))}" for k in keys]


def limit_warning(limit: int | None, n: int) -> str | None:
    if limit is None:
        return None
    return (f"--limit {limit}: the first {n} samples of the task only — not comparable with published full-set "
            f"numbers (subsets per split or subtask may be incomplete)")


def check_same_run(out_dir: Path, previous: dict, config: dict) -> None:
    """Resume only a run with the same identity (:mod:`hallufix.provenance`); name the differing keys."""
    from hallufix import rundir
    from hallufix.errors import RunDirError

    if "identity" not in previous:  # written before run identities: the whole config must match
        legacy = {k: v for k, v in config.items() if k in previous}
        if previous != legacy:
            raise RunDirError(f"{out_dir} holds a run with a different config ({rundir.config_diff(previous, legacy)})"
                              f" — choose another --output, or delete that folder to start over")
        return
    diff = identity_diff(previous["identity"], config["identity"])
    if diff:
        raise RunDirError(f"{out_dir} holds a different run — its samples were generated with other settings: "
                          f"{'; '.join(diff[:6])} — choose another --output (or another directory name), or delete "
                          f"that folder to start over")


def check_same_questions(out_dir: Path, samples, done: dict) -> None:
    """Finished records are reused only for the very same question (a task option that rewrites prompts, a task
    seed that draws other questions under the same ids)."""
    from hallufix.errors import RunDirError

    changed = [(s.id, done[s.id].get("question"), s.question) for s in samples
               if s.id in done and done[s.id].get("question") != s.question]
    if changed:
        sid, old, new = changed[0]
        raise RunDirError(f"{out_dir}: {len(changed)} finished sample(s) were asked another question than the task "
                          f"asks now (e.g. {sid}: {old!r} -> {new!r}) — choose another --output, or delete that "
                          f"folder to start over")


def seed_everything(seed: int) -> dict:
    """Seed python ``random``, numpy and torch (CPU and every CUDA device) with ``seed``; returns what was seeded."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return {"python": seed, "numpy": seed % 2 ** 32, "torch": seed}


def now() -> str:
    """UTC time, ISO 8601 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def command_line() -> list[str]:
    return ["hallufix" if i == 0 and Path(a).name in ("hallufix", "__main__.py") else a
            for i, a in enumerate(sys.argv)]


def reset_peak_memory(device) -> None:
    """Start a run's CUDA peak afresh (a CPU process's peak RSS cannot be reset: it covers earlier runs of the same
    process too, so a grid's later cells report at least the earlier cells' peak)."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device) -> float | None:
    """Peak memory in MiB: CUDA's max allocated on a CUDA device (since :func:`reset_peak_memory`), else the
    process's peak resident set size."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except (ImportError, OSError):
        return None


def to_json(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
