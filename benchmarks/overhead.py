"""Overhead of hallufix method stacks against plain ``generate`` on the same model, in the same process.

    python benchmarks/overhead.py --json                      # every case, CPU, LLaVA-shaped model
    python benchmarks/overhead.py --cases none,clva --rounds 9
    python benchmarks/overhead.py --device cuda --shape llava-7b --dtype bfloat16   # 7B-shaped, on a GPU

The model is a random ``LlavaForConditionalGeneration`` with a tiny CLIP tower and a Llama decoder of the chosen
shape (``llava-cpu``: hidden 512, 8 layers, 8 heads, MLP 1376, vocab 32000, 336 px images -> 576 visual tokens;
``llava-7b``: LLaVA-1.5-7B's decoder dimensions, 32 layers of 32 heads over 32 KV heads, hidden 4096; 6.7 B
parameters, 13.5 GB in bfloat16, built directly on ``--device`` -- a GPU run, too large for a CPU). Each round times, for every case, the baseline (processor +
plain ``model.generate``) and the case (processor + hallufix's hooked generate) back to back, in an order shuffled
per round; the reported ratio is the median over rounds of case / baseline, so machine noise that hits both
halves of a pair cancels. Greedy, ``min_new_tokens = max_new_tokens`` so every run decodes the same length.

Cases: built-in core cases (``none``, ``bias-half``, ``probe-2``) and one YAML file per method case in
``benchmarks/cases/`` (``case``, ``plugins``, ``overrides``, ``target``, optional ``max_new_tokens``, optional
``num_beams``: that case and its baseline run beam search with that many beams, e.g. OPERA against plain beam 5).
Output: a table, or with ``--json`` one JSON object per case per line:
``{"case", "ratio", "ratio_iqr", "ratio_ci95", "baseline_s", "case_s", "target", "rounds", "device", "shape",
"allocator", ...}``
(``page_faults``: the median minor page faults of one baseline and one case generate, from ``getrusage``;
``ratio_iqr``: the interquartile range of the per-round ratios, how much one round moves; ``ratio_ci95``: a
bootstrap 95% interval of the median itself (2000 resamples of the rounds, seeded), the spread to compare with a
target's margin: it narrows as ``--rounds`` grows, the IQR does not).

``--processes P`` runs the rounds in ``P`` fresh processes one after the other and pools them: within one process
the placement of the weights, activations and buffers in memory is fixed, and on a CPU it alone can move a case's
ratio by a percent or two for the whole process, which more rounds never average out. The interval then resamples
processes, then rounds inside them (``"process_medians"`` lists each process's median; ``"rounds"`` is the pooled
count).

``--allocator steady`` (the default) holds glibc's heap steady for the process (``steady_malloc.py``): freed memory
is kept, so no round spends its time faulting and zeroing pages that the previous round returned to the OS
(``page_faults`` in the output; thousands per prefill under the defaults, a handful held steady).
``--allocator system`` keeps the C library's defaults, the setting of runs A-L in docs/benchmarks.md.

``--memory`` adds peak memory: each case (and the baseline) runs one generate in a fresh child process; on CUDA
the peak is ``torch.cuda.max_memory_allocated`` (bytes), on CPU the child's peak resident set size (``ru_maxrss``,
weights and libraries included, as a GPU peak includes the weights). Keys ``peak_mb``, ``baseline_peak_mb``,
``memory_ratio``.
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

from hallufix import hookimpl
from hallufix import points as P

HERE = Path(__file__).resolve().parent

SHAPES = {
    "llava-cpu": dict(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1376, vocab_size=32000),
    "llava-7b": dict(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32, intermediate_size=11008,
                     vocab_size=32000),
}


class HalfBias:
    """Core case ``bias-half``: a visual-key logit bias on the first half of the layers (text rows)."""

    name = "bench-bias-half"

    @hookimpl
    def hallufix_configure(self, model):
        return P.attn_bias(range(model.num_layers // 2))

    @hookimpl
    def hallufix_attn_bias(self, event):
        event.add(torch.where(event.visual_keys, 0.7, 0.0))


class ProbeTwo:
    """Core case ``probe-2``: read the last row's probabilities at two layers."""

    name = "bench-probe-2"

    @hookimpl
    def hallufix_configure(self, model):
        return P.attn_probs([0, model.num_layers // 2], rows="last")

    @hookimpl
    def hallufix_attn_probs(self, event):
        event.last().sum()


CORE_CASES = {
    "none": dict(plugins=[], target=1.02),
    "bias-half": dict(plugins=[HalfBias], target=1.05),
    "probe-2": dict(plugins=[ProbeTwo], target=1.03),
}


def build_session(shape: str, device: str, dtype: str):
    """A :class:`hallufix.api.Session` over a random LLaVA of ``shape`` with a real processor.

    The weights are created on ``device`` (float32, then cast), so a 7B shape never passes through host memory;
    on the CPU this is the same model as building there and moving."""
    from hallufix.api import Session
    from hallufix.models.tiny import build_tiny

    dims = SHAPES[shape]
    torch.manual_seed(0)
    with torch.device(device):
        model, processor = build_tiny("llava", num_layers=dims["num_layers"], hidden_size=dims["hidden_size"],
                                      num_heads=dims["num_heads"], num_kv_heads=dims.get("num_kv_heads"),
                                      intermediate_size=dims["intermediate_size"], vocab_size=dims["vocab_size"],
                                      image_size=336, dtype=dtype)
    model = model.to(device=device)
    return Session(model, processor, name=f"random-{shape}")


def load_cases(names: list[str] | None) -> dict[str, dict]:
    from omegaconf import OmegaConf

    cases = dict(CORE_CASES)
    for f in sorted((HERE / "cases").glob("*.yaml")):
        c = OmegaConf.to_container(OmegaConf.load(f))
        cases[c["case"]] = c
    if names:
        unknown = [n for n in names if n not in cases]
        if unknown:
            sys.exit(f"unknown case(s) {unknown}; known: {', '.join(cases)}")
        cases = {n: cases[n] for n in names}
    return cases


def _image(size=336, seed=0):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="llava-cpu", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least noisy on shared machines)")
    ap.add_argument("--allocator", default="steady", choices=["steady", "system"],
                    help="steady (default): glibc keeps freed memory, so no round pays for faulting pages back in "
                         "(steady_malloc.py); system: the C library's defaults, as runs A-L in docs/benchmarks.md")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory per case (child processes)")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--processes", type=int, default=1,
                    help="run the rounds in this many fresh processes, one after the other, and pool them "
                         "(re-draws the memory placement each time; the interval resamples processes, then rounds)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the round order (process p uses seed + p)")
    ap.add_argument("--child-timings", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child is not None:  # peak memory under the C library's defaults (a steady heap never shrinks)
        return memory_child(args)
    if args.allocator == "steady":
        from steady_malloc import steady

        steady()
    cases = load_cases(args.cases.split(",") if args.cases else None)
    if args.processes > 1 and args.child_timings is None:
        timings, per_process = pooled_timings(args, list(cases))
        return report(args, cases, timings, per_process)

    session = build_session(args.shape, args.device, args.dtype)
    image, question = _image(), "is there a red circle in the upper left part of the image ? answer yes or no ."
    runs = {}
    for name, c in cases.items():
        stack = [p() if isinstance(p, type) else p for p in c.get("plugins", [])]
        runs[name] = session.start(stack, c.get("overrides") or {})

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def baseline(n_new, beams=1):
        inputs = session.adapter.inputs(session.processor, [[image]], [question], session.device)
        with torch.inference_mode():
            session.model.generate(**inputs, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                   num_beams=beams)

    def case(name, n_new):
        from hallufix.decoding import Decoding

        beams = int(cases[name].get("num_beams") or 1)
        decoding = Decoding.from_args("beam", num_beams=beams) if beams > 1 else None
        runs[name].generate([image], [question], max_new_tokens=n_new, min_new_tokens=n_new, decoding=decoding)

    timings = time_rounds(args.rounds, args.seed, cases, baseline, case, sync, args.max_new_tokens)
    if args.child_timings is not None:
        Path(args.child_timings).write_text(json.dumps(timings))
        return 0
    return report(args, cases, timings, None)


def report(args, cases: dict, timings: dict, per_process: dict | None) -> int:
    """Print the table or the JSON lines of ``timings`` (``per_process``: the pooled processes' ratio lists)."""
    peaks = {}
    if args.memory:
        peaks = {n: peak_memory_mb(args, n) for n in ["<baseline>", *cases]}
    rows = []
    for name in cases:
        t = timings[name]
        q1, _, q3 = statistics.quantiles(t["ratio"], n=4) if len(t["ratio"]) > 1 else (t["ratio"][0],) * 3
        lo, hi = median_ci(t["ratio"]) if per_process is None else clustered_median_ci(per_process[name])
        rows.append({"case": name, "ratio": round(statistics.median(t["ratio"]), 4),
                     "ratio_iqr": [round(q1, 4), round(q3, 4)], "ratio_ci95": [round(lo, 4), round(hi, 4)],
                     "baseline_s": round(statistics.median(t["base"]), 4),
                     "case_s": round(statistics.median(t["case"]), 4), "target": cases[name].get("target"),
                     "rounds": len(t["ratio"]), "processes": args.processes, "max_new_tokens": int(cases[name].get("max_new_tokens")
                                                                  or args.max_new_tokens),
                     "device": args.device, "shape": args.shape, "dtype": args.dtype, "threads": args.threads,
                     "allocator": args.allocator,
                     "page_faults": [int(statistics.median(t["base_faults"])),
                                     int(statistics.median(t["case_faults"]))]})
        if per_process is not None:
            rows[-1]["process_medians"] = [round(statistics.median(r), 4) for r in per_process[name]]
        if peaks:
            rows[-1].update(peak_mb=peaks[name], baseline_peak_mb=peaks["<baseline>"],
                            memory_ratio=round(peaks[name] / peaks["<baseline>"], 4))
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(f"{'case':<12} {'ratio':>7} {'target':>7} {'baseline_s':>11} {'case_s':>9}  new tokens")
        for r in rows:
            tgt = "-" if r["target"] is None else f"{r['target']:.2f}"
            flag = "" if r["target"] is None or r["ratio"] <= r["target"] else "  (over target)"
            mem = f"  memory x{r['memory_ratio']:.3f}" if "memory_ratio" in r else ""
            ci = f"  95% CI [{r['ratio_ci95'][0]:.3f}, {r['ratio_ci95'][1]:.3f}]"
            print(f"{r['case']:<12} {r['ratio']:>7.3f} {tgt:>7} {r['baseline_s']:>11.3f} {r['case_s']:>9.3f}  "
                  f"{r['max_new_tokens']}{flag}{mem}{ci}")
    return 0


def time_rounds(rounds: int, seed: int, cases: dict, baseline, case, sync, default_new: int) -> dict:
    """``{case: {"base": [s...], "case": [s...], "ratio": [...]}}`` over ``rounds`` interleaved rounds (a warm-up
    round first, not kept): per round, every case in an order shuffled with ``seed``, its baseline and its own
    generate back to back in a random order."""
    import resource

    def faults() -> int:  # minor page faults of this process so far (the kernel zeroing a page on first touch)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    timings = {n: {"base": [], "case": [], "ratio": [], "base_faults": [], "case_faults": []} for n in cases}
    order = list(cases)
    rng = random.Random(seed)
    for rnd in range(rounds + 1):  # round 0 warms up
        rng.shuffle(order)
        for name in order:
            n_new = int(cases[name].get("max_new_tokens") or default_new)
            beams = int(cases[name].get("num_beams") or 1)
            pair = [("base", lambda: baseline(n_new, beams)), ("case", lambda: case(name, n_new))]
            if rng.random() < 0.5:
                pair.reverse()
            got, flt = {}, {}
            for kind, fn in pair:
                sync()
                f0, t0 = faults(), time.perf_counter()
                fn()
                sync()
                got[kind], flt[kind] = time.perf_counter() - t0, faults() - f0
            if rnd:
                timings[name]["base"].append(got["base"])
                timings[name]["case"].append(got["case"])
                timings[name]["ratio"].append(got["case"] / got["base"])
                timings[name]["base_faults"].append(flt["base"])
                timings[name]["case_faults"].append(flt["case"])
    return timings


def pooled_timings(args, names: list[str]) -> tuple[dict, dict]:
    """Run :func:`time_rounds` in ``args.processes`` fresh processes one after the other (process ``p`` shuffles
    with seed ``args.seed + p``) and pool their rounds: ``(timings, {case: [per-process ratio lists]})``.

    Why processes: within one process the model, its activations and the methods' buffers sit at fixed addresses,
    and on a CPU that placement alone can shift a case's ratio by a percent or two for the whole process
    (cache-set and page effects), a bias more rounds do not average out. Fresh processes re-draw it."""
    import subprocess
    import tempfile

    pooled = {n: {"base": [], "case": [], "ratio": [], "base_faults": [], "case_faults": []} for n in names}
    per_process = {n: [] for n in names}
    forward = ["--cases", ",".join(names), "--rounds", str(args.rounds), "--max-new-tokens", str(args.max_new_tokens),
               "--device", args.device, "--shape", args.shape, "--dtype", args.dtype, "--threads", str(args.threads),
               "--allocator", args.allocator]
    with tempfile.TemporaryDirectory() as tmp:
        for p in range(args.processes):
            out = Path(tmp) / f"p{p}.json"
            subprocess.run([sys.executable, str(Path(__file__).resolve()), *forward, "--seed", str(args.seed + p),
                            "--child-timings", str(out)], check=True)
            got = json.loads(out.read_text())
            for n in names:
                for key in pooled[n]:
                    pooled[n][key] += got[n][key]
                per_process[n].append(got[n]["ratio"])
    return pooled, per_process


def clustered_median_ci(groups: list[list[float]], level: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the pooled median when rounds come in processes: resample the processes with
    replacement, then the rounds inside each, so a per-process bias widens the interval as it should."""
    rng = random.Random(seed)
    meds = []
    for _ in range(resamples):
        pick = []
        for g in rng.choices(groups, k=len(groups)):
            pick += rng.choices(g, k=len(g))
        meds.append(statistics.median(pick))
    meds.sort()
    cut = int(resamples * (1 - level) / 2)
    return meds[cut], meds[resamples - 1 - cut]


def median_ci(values: list[float], level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of ``values`` (resampling rounds with replacement)."""
    if len(values) < 2:
        return values[0], values[0]
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    cut = int(resamples * (1 - level) / 2)
    return meds[cut], meds[resamples - 1 - cut]


def peak_memory_mb(args, name: str) -> float:
    """Peak memory (MB) of one generate of case ``name`` (``<baseline>``: plain generate) in a fresh process."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name, "--device", args.device,
           "--shape", args.shape, "--dtype", args.dtype, "--threads", str(args.threads),
           "--max-new-tokens", str(args.max_new_tokens)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def memory_child(args) -> int:
    """Child of :func:`peak_memory_mb`: build, run one generate, print the peak in MB."""
    import resource

    session = build_session(args.shape, args.device, args.dtype)
    image, question = _image(), "is there a red circle in the upper left part of the image ? answer yes or no ."
    name = args.memory_child
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if name == "<baseline>":
        inputs = session.adapter.inputs(session.processor, [[image]], [question], session.device)
        with torch.inference_mode():
            session.model.generate(**inputs, max_new_tokens=args.max_new_tokens,
                                   min_new_tokens=args.max_new_tokens, do_sample=False)
    else:
        c = load_cases([name])[name]
        n_new = int(c.get("max_new_tokens") or args.max_new_tokens)
        stack = [p() if isinstance(p, type) else p for p in c.get("plugins", [])]
        session.start(stack, c.get("overrides") or {}).generate([image], [question], max_new_tokens=n_new,
                                                                 min_new_tokens=n_new)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(round(peak, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
