"""``hallufix tasks`` (every registered task: what it is, its options with defaults, its metrics and their
directions) and ``hallufix models`` (the model aliases and what they resolve to)."""
from __future__ import annotations

import argparse
import inspect
import json


def register(sub) -> None:
    t = sub.add_parser("tasks", help="list the tasks: options (task.KEY=VALUE) with defaults, metrics, directions",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       epilog="example: hallufix tasks --json")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.set_defaults(handler=_tasks)
    m = sub.add_parser("models", help="list the model aliases (any hub id or save_pretrained folder works too)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, epilog="example: hallufix models")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(handler=_models)


def task_catalog() -> list[dict]:
    """``[{name, summary, path_argument, options: {key: default}, metrics: {name: higher_is_better}}]``."""
    from hallufix.tasks.base import _TASKS, known_tasks

    out = []
    for name in known_tasks():
        factory = _TASKS[name]
        params = inspect.signature(factory).parameters
        options = {k: (None if p.default is inspect.Parameter.empty else p.default) for k, p in params.items()
                   if k not in ("self", "path") and p.kind is not inspect.Parameter.VAR_KEYWORD}
        own = factory.__dict__.get("__doc__") if isinstance(factory, type) else factory.__doc__
        doc = inspect.cleandoc(own or "").split("\n\n")[0].replace("\n", " ")
        out.append({"name": name, "summary": doc, "path_argument": "path" in params, "options": options,
                    "metrics": {m.name: m.higher_is_better for m in getattr(factory, "metrics", ())}})
    return out


def _tasks(args) -> int:
    cat = task_catalog()
    if args.json:
        print(json.dumps(cat, indent=1, default=str))
        return 0
    for t in cat:
        usage = f"--task {t['name']}:PATH" if t["path_argument"] else f"--task {t['name']}"
        print(f"{t['name']}  ({usage})\n  {t['summary']}")
        if t["options"]:
            print("  options: " + ", ".join(f"task.{k}={v!r}" for k, v in t["options"].items()))
        arrows = {True: "higher is better", False: "lower is better", None: "no direction"}
        if t["metrics"]:
            print("  metrics: " + ", ".join(f"{k} ({arrows[v]})" for k, v in t["metrics"].items()))
        print()
    return 0


def _models(args) -> int:
    from hallufix.models.registry import ALIASES, BUILTIN_NAMES, DEFAULT_MODEL

    rows = [{"alias": n, "resolves_to": "the built-in shapes model shipped with hallufix (no download)"}
            for n in BUILTIN_NAMES]
    rows += [{"alias": a, "resolves_to": hub} for a, hub in ALIASES.items()]
    if args.json:
        print(json.dumps({"default": DEFAULT_MODEL, "aliases": rows}, indent=1))
        return 0
    width = max(len(r["alias"]) for r in rows)
    for r in rows:
        print(f"{r['alias']:<{width}}  {r['resolves_to']}")
    print(f"\ndefault: {DEFAULT_MODEL}; --model also takes any hub id (downloaded with `hf download ID`, "
          f"huggingface_hub's CLI) or a local folder in the save_pretrained layout")
    return 0
