"""A small fixed question file about the shapes world, for tests of the shipped weights (no torch).

    python -m hallufix.builtin.questions tests/data/builtin_questions.jsonl

Each row: ``{"scene_seed", "kind", "question", "answer"}``; the image is ``render(sample_scene(Random(scene_seed)))``.
Kinds cycle through existence (half of the rows), colour, count, position and the open colour question; yes/no
answers alternate so the file is balanced. Scene seeds start at :data:`SEED_BASE`, disjoint from the training
stream (>= 1,000,000) and from the evaluation sets.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from hallufix.builtin.language import COLOUR_NAMES, colour_question, count_question, exist_question, \
    position_question
from hallufix.builtin.world import CLASSES, sample_scene

SEED_BASE = 70_000
KINDS = ("exist", "colour", "exist", "count", "exist", "position", "exist", "what-colour")


def question(scene, kind: str, yes: bool, rng: random.Random) -> tuple[str, str]:
    """``(question, answer)`` of one kind about ``scene``; ``yes`` picks the gold answer of yes/no kinds."""
    present = sorted(scene.classes)
    obj = scene.get(rng.choice(present))
    if kind == "exist":
        absent = [c for c in CLASSES if c not in scene.classes]
        return exist_question(obj.cls if yes else rng.choice(absent)), "yes" if yes else "no"
    if kind == "colour":
        colour = obj.colour if yes else rng.choice([c for c in COLOUR_NAMES if c != obj.colour])
        return colour_question(obj.cls, colour), "yes" if yes else "no"
    if kind == "count":
        n = len(scene.objects)
        k = n if yes else rng.choice([x for x in range(1, 5) if x != n])
        return count_question(k), "yes" if yes else "no"
    if kind == "position":
        side = obj.side if yes else ("right" if obj.side == "left" else "left")
        return position_question(obj.cls, side), "yes" if yes else "no"
    if kind == "what-colour":
        return f"what colour is the {obj.cls} ?", obj.colour
    raise ValueError(f"unknown question kind '{kind}'")


def fixed_questions(n: int = 40) -> list[dict]:
    """The ``n`` rows of the fixed file (deterministic)."""
    rows, seen = [], {k: 0 for k in KINDS}
    for i in range(n):
        seed = SEED_BASE + i
        scene, rng = sample_scene(random.Random(seed)), random.Random(seed + 1)
        kind = KINDS[i % len(KINDS)]
        q, a = question(scene, kind, yes=seen[kind] % 2 == 0, rng=rng)
        seen[kind] += 1
        rows.append({"scene_seed": seed, "kind": kind, "question": q, "answer": a})
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rows = fixed_questions()
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if argv:
        Path(argv[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
