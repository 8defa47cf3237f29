"""An image-free branch as left-padded batch rows vs as a separate forward, on the CPU LLaVA-shaped model.

    python benchmarks/branch_rows_vs_separate.py --rounds 5 --max-new-tokens 16,64

Per round, interleaved in a shuffled order: ``base`` (plain ``generate`` of the image prompt), ``rows`` (one
``generate`` of the image prompt plus the same question without the image, left-padded into the same batch: what
``Branch(image="none")`` runs) and ``separate`` (the base ``generate`` plus a second ``generate`` of the image-free
prompt alone: what a separate forward per step costs at least, its own prefill and one more forward per step).
Prints the medians of rows / base and separate / base per token budget.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import _image, build_session  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-new-tokens", default="16,64")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from hallufix.branches import Branch
    from hallufix.intercept.branch import BranchPass

    s = build_session("llava-cpu", "cpu", "float32")
    image, q = _image(), "is there a red circle in the upper left part of the image ? answer yes or no ."
    rows = [[image]]
    main_in = s.adapter.inputs(s.processor, rows, [q], s.device)
    both = BranchPass.build(s, [("bench", Branch("no_image", image="none"))], main_in, rows, [q]).inputs
    text_in = {k: both[k][1:] for k in ("input_ids", "attention_mask")}
    text_in = {k: v[:, int((1 - both["attention_mask"][1]).sum()):] for k, v in text_in.items()}  # unpadded

    def gen(inputs, n):
        with torch.inference_mode():
            s.model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    for n in [int(x) for x in args.max_new_tokens.split(",")]:
        cases = {"base": lambda: gen(main_in, n), "rows": lambda: gen(both, n),
                 "separate": lambda: (gen(main_in, n), gen(text_in, n))}
        t = {k: [] for k in cases}
        rng = random.Random(0)
        for rnd in range(args.rounds + 1):
            order = list(cases)
            rng.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                cases[k]()
                if rnd:
                    t[k].append(time.perf_counter() - t0)
        ratio = lambda k: statistics.median(a / b for a, b in zip(t[k], t["base"]))  # noqa: E731
        print(f"max_new_tokens {n}: prompt {main_in['input_ids'].shape[1]} / image-free {text_in['input_ids'].shape[1]}"
              f" tokens; base {statistics.median(t['base']):.3f} s; rows x{ratio('rows'):.3f}; "
              f"separate x{ratio('separate'):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
