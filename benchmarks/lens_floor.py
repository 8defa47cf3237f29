"""What the logit lens itself costs DoLa and MemVR on the CPU LLaVA-shaped model: the time spent in ``lm_head``
per generate, against a same-run plain ``generate``, and the overhead floor that time sets.

    python benchmarks/lens_floor.py --rounds 9 [--cases none,dola,memvr] [--json]

Per round, in an order shuffled per round: the baseline (processor + plain ``generate``, greedy,
``min_new_tokens = max_new_tokens``) and each case's hooked generate (the case files of ``benchmarks/cases/``, as
``overhead.py`` runs them). Two timing hooks on the model's ``lm_head`` module bracket every call of it: the
model's own product, the lens rows the core computes inside the head's hooks (``hallufix/intercept/lens_join.py``:
the pre-hook here is prepended, and the core's post-hook is prepended before this one, so both are inside the
bracket) and the separate lens products (MemVR's trigger calls the head through ``LogitLens``). Per round:

* ``ratio``: case / baseline generate time (seconds, ``time.perf_counter``);
* ``head_ms``: the baseline's time in the head per generate; ``case_head_ms``: the case's;
* ``floor``: ``1 + (case_head - head) / baseline generate``: the ratio the case would have if everything but the
  extra head work were free;
* ``rest``: ``ratio - floor``: the method's arithmetic, its hooks and the core's events.

Prints, per case, the median over rounds of each with a bootstrap 95% interval of the median (``ratio``,
``floor``), or one JSON object per line with ``--json``. The timing hooks cost the baseline and the cases alike
(two ``perf_counter`` calls per head call).
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
from overhead import _image, build_session, load_cases, median_ci  # noqa: E402


class HeadClock:
    """Sums the wall time of every ``lm_head`` call (seconds) between :meth:`reset` calls."""

    def __init__(self, head: torch.nn.Module):
        self.total, self._t0 = 0.0, None
        head.register_forward_pre_hook(self._pre, prepend=True)
        head.register_forward_hook(self._post)

    def _pre(self, module, args):
        self._t0 = time.perf_counter()

    def _post(self, module, args, output):
        self.total += time.perf_counter() - self._t0

    def reset(self) -> float:
        total, self.total = self.total, 0.0
        return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="none,dola,memvr", help="case names (none: the control, floor 1)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="seed of the round order")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from steady_malloc import steady

    steady()  # as overhead.py's default: no round pays for faulting freed pages back in
    cases = load_cases(args.cases.split(","))
    s = build_session("llava-cpu", "cpu", "float32")
    clock = HeadClock(s.adapter.lm_head(s.model))
    image, question = _image(), "is there a red circle in the upper left part of the image ? answer yes or no ."
    runs = {name: s.start([p() if isinstance(p, type) else p for p in c.get("plugins", [])], c.get("overrides") or {})
            for name, c in cases.items()}
    n = args.max_new_tokens

    def baseline():
        inputs = s.adapter.inputs(s.processor, [[image]], [question], s.device)
        with torch.inference_mode():
            s.model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def timed(fn) -> tuple[float, float]:
        clock.reset()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0, clock.reset()

    got = {name: {"ratio": [], "floor": [], "rest": [], "head": [], "case_head": []} for name in cases}
    rng = random.Random(args.seed)
    order = list(cases)
    for rnd in range(args.rounds + 1):  # round 0 warms up
        rng.shuffle(order)
        for name in order:
            pair = [("base", baseline), ("case", lambda: runs[name].generate([image], [question], max_new_tokens=n,
                                                                             min_new_tokens=n))]
            if rng.random() < 0.5:
                pair.reverse()
            t = {kind: timed(fn) for kind, fn in pair}
            if rnd:
                (base_s, base_head), (case_s, case_head) = t["base"], t["case"]
                g = got[name]
                g["ratio"].append(case_s / base_s)
                g["floor"].append(1 + (case_head - base_head) / base_s)
                g["rest"].append(g["ratio"][-1] - g["floor"][-1])
                g["head"].append(base_head * 1e3)
                g["case_head"].append(case_head * 1e3)
    for name, g in got.items():
        row = {"case": name, "ratio": round(statistics.median(g["ratio"]), 4),
               "ratio_ci95": [round(v, 4) for v in median_ci(g["ratio"])],
               "floor": round(statistics.median(g["floor"]), 4),
               "floor_ci95": [round(v, 4) for v in median_ci(g["floor"])],
               "rest": round(statistics.median(g["rest"]), 4),
               "head_ms": round(statistics.median(g["head"]), 2),
               "case_head_ms": round(statistics.median(g["case_head"]), 2),
               "rounds": args.rounds, "max_new_tokens": n, "threads": args.threads}
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{name:<8} ratio {row['ratio']:.3f} {row['ratio_ci95']}  floor {row['floor']:.3f} "
                  f"{row['floor_ci95']}  rest {row['rest']:+.3f}  head {row['head_ms']:.1f} ms -> "
                  f"{row['case_head_ms']:.1f} ms per generate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
