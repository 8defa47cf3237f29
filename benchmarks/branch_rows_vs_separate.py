"""The two branch modes (extra batch rows, or a separate forward on the branch's own rows) on the CPU LLaVA-shaped
model, with the plain-``generate`` floors they cannot beat.

    python benchmarks/branch_rows_vs_separate.py --rounds 7 --max-new-tokens 16,64 [--json]

Per round, interleaved in a shuffled order, every case against the same baseline ``base`` (processor + plain
``generate`` of the one-image prompt, greedy, ``min_new_tokens = max_new_tokens``):

* floors (plain ``generate``, no hooks): ``floor-2rows`` (the prompt twice in one batch: what a same-length branch
  as rows costs at least, VCD's floor), ``floor-padded`` (the prompt plus the image-free prompt left-padded into the
  same batch: PAI's branch as rows), ``floor-separate`` (the base ``generate`` plus a second ``generate`` of the
  image-free prompt alone: its own prefill and one more forward per step);
* hallufix runs: ``vcd`` / ``vcd-separate``, ``pai-cfg`` / ``pai-cfg-rows`` (the branch alone, ``alpha=0``),
  ``pai`` / ``pai-rows`` (the official defaults).

Prints, per token budget and case, the median over rounds of case / base with a bootstrap 95% interval of that
median (``overhead.median_ci``), or one JSON object per line with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import _image, build_session, median_ci  # noqa: E402

RUNS = {"vcd": (["vcd"], {"vcd": ["branch=rows"]}), "vcd-separate": (["vcd"], {"vcd": ["branch=separate"]}),
        "pai-cfg": (["pai"], {"pai": ["alpha=0", "branch=separate"]}),
        "pai-cfg-rows": (["pai"], {"pai": ["alpha=0", "branch=rows"]}),
        "pai": (["pai"], {"pai": ["branch=separate"]}), "pai-rows": (["pai"], {"pai": ["branch=rows"]})}
FLOORS = ("floor-2rows", "floor-padded", "floor-separate")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-new-tokens", default="16,64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", default=",".join(FLOORS + tuple(RUNS)))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from hallufix.branches import Branch
    from hallufix.intercept.branch import BranchPass

    s = build_session("llava-cpu", "cpu", "float32")
    image, q = _image(), "is there a red circle in the upper left part of the image ? answer yes or no ."
    rows = [[image]]
    main_in = s.adapter.inputs(s.processor, rows, [q], s.device)
    two = s.adapter.inputs(s.processor, rows * 2, [q, q], s.device)
    padded = BranchPass.build(s, [("bench", Branch("no_image", image="none", mode="rows"))], main_in, rows, [q]).inputs
    skip = int((1 - padded["attention_mask"][1]).sum())
    text_in = {k: padded[k][1:, skip:] for k in ("input_ids", "attention_mask")}  # the image-free prompt, unpadded
    runs = {name: s.start(p, o) for name, (p, o) in RUNS.items()}

    def gen(inputs, n):
        with torch.inference_mode():
            s.model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def base(n):
        gen(s.adapter.inputs(s.processor, rows, [q], s.device), n)

    for n in [int(x) for x in args.max_new_tokens.split(",")]:
        cases = {"floor-2rows": lambda: gen(two, n), "floor-padded": lambda: gen(padded, n),
                 "floor-separate": lambda: (gen(main_in, n), gen(text_in, n))}
        cases.update({k: (lambda r=r: r.generate([image], [q], max_new_tokens=n, min_new_tokens=n))
                      for k, r in runs.items()})
        cases = {k: v for k, v in cases.items() if k in args.cases.split(",")}
        ratios = {k: [] for k in cases}
        rng = random.Random(0)
        for rnd in range(args.rounds + 1):  # round 0 warms up
            order = list(cases)
            rng.shuffle(order)
            for k in order:
                pair = [("base", lambda: base(n)), ("case", cases[k])]
                if rng.random() < 0.5:
                    pair.reverse()
                t = {}
                for kind, fn in pair:
                    t0 = time.perf_counter()
                    fn()
                    t[kind] = time.perf_counter() - t0
                if rnd:
                    ratios[k].append(t["case"] / t["base"])
        for k, r in ratios.items():
            lo, hi = median_ci(r)
            row = {"case": k, "max_new_tokens": n, "ratio": round(statistics.median(r), 3),
                   "ratio_ci95": [round(lo, 3), round(hi, 3)], "rounds": len(r),
                   "prompt_tokens": main_in["input_ids"].shape[1], "image_free_tokens": text_in["input_ids"].shape[1]}
            print(json.dumps(row) if args.json else
                  f"{n:>3} tokens  {k:<15} x{row['ratio']:.3f}  (95% CI {lo:.3f}-{hi:.3f}, {len(r)} rounds)",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
