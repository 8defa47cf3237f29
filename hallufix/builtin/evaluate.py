"""Evaluate the built-in model: the acceptance figures of docs/builtin-model.md.

    python -m hallufix.builtin.evaluate [--model DIR] [--write]

Prints (and with ``--write`` stores in the model folder's ``training.json``): synthetic POPE accuracy per split,
false-positive rates on absent co-occurrence partners vs other absent classes, CHAIR_s / CHAIR_i, MME-style
scores, and the attention check: per layer, the last row's attention mass on the visual tokens covering the asked
object divided by their area share (yes-questions of synthetic POPE), averaged over questions.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

from hallufix import hookimpl
from hallufix import points as P


class _LastRowProbe:
    """Records the last prompt row's head-averaged attention over the visual tokens at every layer (prefill)."""

    name = "builtin-eval-probe"

    def __init__(self):
        self.maps: dict[int, torch.Tensor] = {}

    @hookimpl
    def hallufix_configure(self, model):
        return P.attn_probs(range(model.num_layers), rows="last", phases={"prefill"})

    @hookimpl
    def hallufix_attn_probs(self, event):
        from hallufix.capture import gather_visual

        self.maps[event.layer] = gather_visual(event.last().float(), event.visual_keys).mean(1)  # (B, n)


def object_attention_ratio(session, n: int = 120, batch: int = 32) -> dict[int, float]:
    """Per layer: mean over yes-questions of (attention mass on the asked object's cells / total visual mass) /
    (those cells' share of the grid)."""
    from hallufix.builtin.language import exist_question
    from hallufix.builtin.world import IMAGE_SIZE, render, sample_scene

    grid = session.info.grid
    cell = IMAGE_SIZE // grid[0]
    ratios: dict[int, list[float]] = {}
    rng = random.Random(5)
    for start in range(0, n, batch):
        scenes = [sample_scene(random.Random(50_000 + i)) for i in range(start, min(n, start + batch))]
        objs = [rng.choice(s.objects) for s in scenes]
        probe = _LastRowProbe()
        session.start([probe]).generate([render(s) for s in scenes], [exist_question(o.cls) for o in objs],
                                        max_new_tokens=1)
        for b, o in enumerate(objs):
            x0, y0, x1, y1 = o.box
            cells = torch.zeros(grid)
            cells[y0 // cell:(y1 - 1) // cell + 1, x0 // cell:(x1 - 1) // cell + 1] = 1
            share = float(cells.mean())
            for layer, maps in probe.maps.items():
                m = maps[b]
                ratios.setdefault(layer, []).append(float((m * cells.flatten()).sum() / m.sum()) / share)
    return {layer: sum(v) / len(v) for layer, v in sorted(ratios.items())}


def evaluate(model: str | None = None, batch: int = 32) -> dict:
    from hallufix.api import Session
    from hallufix.runs import RunSpec, execute
    from hallufix.tasks import get_task

    session = Session.load(model or "builtin")
    out = {}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("shapes-pope", "shapes-chair", "shapes-mme"):
            res = execute(session, get_task(name), RunSpec(task=name, batch_size=batch), Path(tmp) / name,
                          progress=False)
            out[name] = {split: {k: round(v["value"], 4) for k, v in m.items() if k not in ("tp", "fp", "tn", "fn",
                                                                                            "n")}
                         for split, m in res["metrics"].items()}
    ratios = object_attention_ratio(session)
    best = max(ratios, key=ratios.get)
    out["object_attention_ratio"] = {"per_layer": {str(k): round(v, 3) for k, v in ratios.items()},
                                     "best_layer": best, "best": round(ratios[best], 3)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate the built-in model on the synthetic benchmarks.")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped built-in model)")
    ap.add_argument("--write", action="store_true", help="store the figures in the model folder's training.json")
    args = ap.parse_args(argv)
    res = evaluate(args.model)
    print(json.dumps(res, indent=1))
    if args.write:
        from hallufix.builtin import BUILTIN_MODEL_DIR

        folder = Path(args.model) if args.model else BUILTIN_MODEL_DIR
        rec_path = folder / "training.json"
        rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
        rec["evaluation"] = res
        rec_path.write_text(json.dumps(rec, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
