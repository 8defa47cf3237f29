"""Where a method's per-step time goes: each hooked layer's attention call at decode steps against plain SDPA on
the same inputs, on the CPU LLaVA-shaped model of ``overhead.py``.

    python benchmarks/attention_layers.py --case clva            # any case name of overhead.py

For every decode call of the hallufix attention function it times the call (probe rows, the methods' hooks, the
biased kernel) and then transformers' own SDPA function on the same query/key/value; prints per layer the medians
in microseconds and the difference. Timing wraps hallufix's ``run_layer`` only (no transformers code is patched).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead as O  # noqa: E402

from hallufix.intercept import attention as A  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="clva")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    session = O.build_session("llava-cpu", "cpu", "float32")
    c = O.load_cases([args.case])[args.case]
    run = session.start([p() if isinstance(p, type) else p for p in c.get("plugins", [])], c.get("overrides") or {})
    image, question = O._image(), "is there a red circle in the upper left part of the image ? answer yes or no ."
    per_layer: dict[int, list[tuple[float, float]]] = {}
    original = A.run_layer

    def timed(st, plan, module, query, key, value, attention_mask, scaling, dropout, kwargs):
        t = time.perf_counter()
        out = original(st, plan, module, query, key, value, attention_mask, scaling, dropout, kwargs)
        hooked = time.perf_counter() - t
        if st.forward.phase == "decode":
            t = time.perf_counter()
            A.sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                     **kwargs)
            per_layer.setdefault(plan.layer, []).append((hooked * 1e6, (time.perf_counter() - t) * 1e6))
        return out

    n = args.max_new_tokens
    run.generate([image], [question], max_new_tokens=n, min_new_tokens=n)  # warm-up
    A.run_layer = timed
    try:
        for _ in range(args.runs):
            run.generate([image], [question], max_new_tokens=n, min_new_tokens=n)
    finally:
        A.run_layer = original
    print(f"case {args.case}: decode-step attention calls, medians over {args.runs} generates")
    print(f"{'layer':>5} {'hooked us':>10} {'plain sdpa us':>14} {'extra us':>9}")
    for layer, v in sorted(per_layer.items()):
        h, p = statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)
        print(f"{layer:>5} {h:>10.1f} {p:>14.1f} {h - p:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
