"""Write an inspection folder: every figure with the numbers behind it, and an ``index.md`` showing them together.

Files (``*_on`` only with a method stack)::

    head_matrix.png / head_matrix.csv         phi (layer x head) and the sensitive / insensitive thresholds
    maps.png / maps_sensitive.png / maps.json last-row maps over the image per layer (all heads; sensitive heads)
    curves.png / curves.csv                   entropy, visual mass, correlation with the two anchors, per layer
    maps_on.png / maps_on.json / curves_on.*  the same with the methods active
    diagnostics.json                          each method's per-sample diagnostics
    index.md
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from hallufix import figures
from hallufix.analysis import LayerAnalysis, MaskVisualAtLayer, analyse, average, suggest_layers


def _views(session, images, analyses: list[LayerAnalysis]):
    grid = analyses[0].grid
    return grid, (session.adapter.model_view(session.processor, images[0], grid) if grid else None)


def _write_maps(a: LayerAnalysis, view, layers, out: Path, stem: str, title: str) -> None:
    maps = a.mean_map()
    sens, _ = a.head_sets()
    payload = {"grid": a.grid, "layers": list(range(maps.shape[0])), "head_average": maps.tolist(),
               "sensitive_heads": a.mean_map(sens).tolist()}
    (out / f"{stem}.json").write_text(json.dumps(payload))
    if view is not None:
        figures.layer_maps(view, maps.numpy(), a.grid, layers, out / f"{stem}.png", f"{title}: all heads")
        figures.layer_maps(view, a.mean_map(sens).numpy(), a.grid, layers, out / f"{stem}_sensitive.png",
                           f"{title}: sensitive heads")
    else:  # no spatial grid (InstructBLIP's query tokens): a layer x token matrix
        plt = figures.require_matplotlib()
        fig, ax = plt.subplots(figsize=(6, 3))
        im = ax.imshow(maps.numpy(), aspect="auto")
        ax.set_xlabel("visual token (no spatial grid)")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, label="attention to the token")
        ax.set_title(title, fontsize=9)
        figures.save(fig, out / f"{stem}.png")


def _write_curves(a: LayerAnalysis, out: Path, stem: str, title: str, compare: dict | None = None,
                  labels=("method off", "method on"), anchors=None) -> dict:
    c = a.curves()
    with (out / f"{stem}.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer"] + list(c))
        for i in range(len(c["entropy"])):
            w.writerow([i] + [c[k][i] for k in c])
    figures.curves(c, out / f"{stem}.png", title)
    if compare is not None:  # off and on on one axis per quantity
        figures.curves(compare, out / "curves_on_off.png", title, compare=c, labels=labels, anchors=anchors)
    return c


def write_inspection(session, images, questions, out: Path, plugins=(), overrides=None, lambda_vis: float = 1.0,
                     layers=None) -> Path:
    """Analyse (averaging over all given samples) and write the folder; returns the index path."""
    from hallufix.config import parse_layers

    out.mkdir(parents=True, exist_ok=True)
    off, _ = analyse(session, images, questions, lambda_vis=lambda_vis)
    a = average(off) if len(off) > 1 else off[0]
    L = session.info.num_layers
    draw = parse_layers(layers, L) if layers else list(range(L))
    grid, view = _views(session, images, off)
    hi, lo = a.thresholds
    with (out / "head_matrix.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "upper", "lower"] + [f"head{h}" for h in range(a.phi.shape[1])])
        for i in range(L):
            w.writerow([i, float(hi[i]), float(lo[i])] + a.phi[i].tolist())
    figures.head_matrix(a.phi.numpy(), hi.numpy(), lo.numpy(), out / "head_matrix.png")
    # averaged maps are drawn over the first image: say so in the title
    shown = "" if len(images) == 1 else f" (mean over {len(images)} samples, drawn on the first image)"
    _write_maps(a, view, draw, out, "maps", "method off" + shown)
    off_curves = _write_curves(a, out, "curves", "method off")
    lines = [f"# Attention inspection: {session.info.name} ({session.info.family})", "",
             f"{len(images)} sample(s){' (averaged)' if len(images) > 1 else ''}; first question: "
             f"*{questions[0]}*", "", "## Visual attention intensity per head", "",
             "![](head_matrix.png)", "", "Numbers: `head_matrix.csv`.", "",
             "## Last-row attention over the image, per layer", "", "![](maps.png)", ""]
    if view is not None:
        lines += ["Sensitive heads only:", "", "![](maps_sensitive.png)", ""]
    lines += ["Numbers: `maps.json`.", "", "## Per-layer curves", "", "![](curves.png)", "",
              "Numbers: `curves.csv`.", ""]
    if plugins:
        on, diags = analyse(session, images, questions, plugins, overrides, lambda_vis=lambda_vis)
        b = average(on) if len(on) > 1 else on[0]
        _write_maps(b, view, draw, out, "maps_on", f"with {'+'.join(map(str, plugins))}" + shown)
        name = "+".join(map(str, plugins))
        _write_curves(b, out, "curves_on", f"method off vs {name}", compare=off_curves,
                      labels=("method off", f"with {name}"), anchors=anchor_layers(session, plugins, overrides))
        (out / "diagnostics.json").write_text(json.dumps(diags, indent=1, default=str))
        lines += [f"## With {' + '.join(map(str, plugins))}", "", "![](maps_on.png)", "",
                  "Off and on on one axis (dashed: the layers the methods' configs name):", "",
                  "![](curves_on_off.png)", "",
                  "Each method's diagnostics: `diagnostics.json`.", ""]
    index = out / "index.md"
    index.write_text("\n".join(lines))
    return index


def anchor_layers(session, plugins, overrides=None) -> list[int]:
    """The layers the stack's resolved configs name (every config key containing ``layer`` with an int or a list
    of ints), 0-based, within the model's depth: marked on the on/off curves."""
    try:
        methods = session.start(list(plugins), overrides or {}).methods.record()
    except Exception:  # an anchor mark is a courtesy: never fail the inspection for it
        return []
    found: set[int] = set()
    for m in methods:
        for key, value in (m.get("config") or {}).items():
            if "layer" not in str(key).lower():
                continue
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < session.info.num_layers:
                    found.add(v)
    return sorted(found)


def layer_masking(session, task_spec: str, out: Path, limit: int = 200, batch_size: int = 16,
                  task_options: dict | None = None) -> dict:
    """Accuracy on a yes/no task with visual tokens hidden at one layer at a time, plus the suggestion."""
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
