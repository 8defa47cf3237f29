"""The layer knock-out behind contrast's layer choice (Song, Li, Yu 2026): accuracy on a yes/no task with the
visual tokens hidden from one decoder layer at a time, and the ``fusion_layers`` / ``review_layer`` it suggests.

Registered as the ``task`` analysis ``layer-masking`` (``hallufix analyze layer-masking``, :func:`layer_masking`).
The knock-out is an ordinary method on the core's attention interception (:class:`MaskVisualAtLayer`: a ``-inf``
bias on the visual keys of one layer, text rows, prefill and decode).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from hallufix import figures, hookimpl
from hallufix import points as P


class MaskVisualAtLayer:
    """Internal method: text rows cannot see visual tokens at ``layer`` (single-layer knock-out)."""

    name = "hallufix-layer-mask"

    def __init__(self, layer: int):
        self.layer = layer

    @hookimpl
    def hallufix_configure(self, model):
        return P.attn_bias([self.layer])

    @hookimpl
    def hallufix_attn_bias(self, event):
        event.add(torch.where(event.visual_keys, float("-inf"), 0.0))


def suggest_layers(accuracy: list[float], baseline: float, num_layers: int) -> dict:
    """contrast's ``fusion_layers`` = shallow layers (first 60%) whose knock-out costs the most accuracy (drop >=
    half of the largest shallow drop); ``review_layer`` = the deep layer (last 40%) with the largest drop, if it
    costs anything. Also ``drops`` per layer."""
    drops = [baseline - a for a in accuracy]
    split = int(round(num_layers * 0.6))
    shallow = drops[:split]
    top = max(shallow) if shallow else 0.0
    fusion = [i for i, d in enumerate(shallow) if top > 0 and d >= top / 2]
    deep = list(range(split, num_layers))
    review = max(deep, key=lambda i: drops[i]) if deep else None
    if review is not None and drops[review] <= 0:
        review = None
    return {"fusion_layers": fusion, "review_layer": review, "drops": drops}


def layer_masking(session, task_spec: str, out: Path, limit: int = 200, batch_size: int = 16,
                  task_options: dict | None = None) -> dict:
    """Accuracy on a yes/no task with visual tokens hidden at one layer at a time, plus the suggestion; writes
    ``layer_masking.{csv,json}`` and the curve (PNG, PDF, SVG) into ``out``."""
    from tqdm import tqdm

    from hallufix.tasks import get_task
    from hallufix.tasks.base import iter_batches

    task = get_task(task_spec, **(task_options or {}))
    samples = [s for s in task.samples() if s.answer is not None][:limit]
    if not samples:
        raise ValueError(f"task '{task_spec}' has no samples with answers")
    L = session.info.num_layers

    def accuracy(plugins) -> float:
        run = session.start(plugins)
        right = 0
        for batch in iter_batches(samples, batch_size):
            outs = run.generate([s.load_image() for s in batch], [s.question for s in batch],
                                max_new_tokens=task.max_new_tokens)
            right += sum(str(task.parse(s, o.text)).lower() == str(s.answer).lower() for s, o in zip(batch, outs))
        return right / len(samples)

    base = accuracy([])
    accs = [accuracy([MaskVisualAtLayer(i)]) for i in tqdm(range(L), desc="layer masking", unit="layer")]
    suggestion = suggest_layers(accs, base, L)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "layer_masking.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "accuracy", "drop"])
        for i, acc in enumerate(accs):
            w.writerow([i, acc, base - acc])
    result = {"task": task_spec, "n": len(samples), "baseline": base, "accuracy": accs, "suggestion": suggestion}
    (out / "layer_masking.json").write_text(json.dumps(result, indent=1))
    figures.masking_curve(accs, base, suggestion, out / "layer_masking.png", n=len(samples))
    return result
