"""CLVA's two placements on the tiny real-depth InstructBLIP: anchors per prompt and the effect on the logits.

    python scripts/clva_placement_effect.py [--new-tokens 4]

Builds the tiny random InstructBLIP at the 7B checkpoint's depth and head counts (32 layers x 32 heads, 2 Q-Former
layers over 16 patches), generates greedily for 8 prompts (4 mixed-size images, then 4 more) without a method,
with ``clva.placement=lm`` and with ``clva.placement=qformer`` (paper defaults), and prints per placement the
anchors per prompt (query tokens for ``lm``, patches for ``qformer``), the max |logit difference| to the baseline
per prompt and how many answers changed.
"""
from __future__ import annotations

import argparse

import torch

from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=4)
    args = ap.parse_args()
    s = tiny_session("instructblip", shape="real")
    images = tiny_images(4, mixed=True) + tiny_images(4, seed=1)
    questions = list(QUESTIONS[:4]) * 2
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, output_logits=True)
    base = s.start([]).generate(images, questions, **kw)
    for placement in ("lm", "qformer"):
        outs = s.start(["clva"], {"clva": [f"placement={placement}"]}).generate(images, questions, **kw)
        delta = [(b.logits - o.logits).abs().max().item() for b, o in zip(base, outs)]
        changed = sum(not torch.equal(b.token_ids, o.token_ids) for b, o in zip(base, outs))
        pre = [o.diagnostics["clva"]["prefill"] for o in outs]
        pos = sum(p["positive_anchors"] for p in pre) / len(pre)
        neg = sum(p["negative_anchors"] for p in pre) / len(pre)
        print(f"placement={placement}: anchors per prompt positive {pos:.2f} negative {neg:.2f}; "
              f"max |dlogit| per prompt {', '.join(f'{d:.3g}' for d in delta)}; "
              f"{changed} of {len(outs)} answers changed")


if __name__ == "__main__":
    main()
