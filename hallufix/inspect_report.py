"""Write an inspection folder: the core's generic per-layer figures with the numbers behind them, then every
registered ``inspect`` analysis (:mod:`hallufix.analysis`), and an ``index.md`` showing them together.

Core files (``*_on`` only with a method stack)::

    maps.png / maps.json                      last-row maps over the image per layer (head average)
    curves.png / curves.csv                   entropy and visual mass of those maps, per layer
    maps_on.png / maps_on.json / curves_on.*  the same with the methods active
    curves_on_off.png                         off and on on one axis, the stack's configured layers marked
    diagnostics.json                          each method's per-sample diagnostics
    index.md

Each registered analysis adds its own files and section (the built-in ones: ``clva-drift``'s head matrix and
drift curves).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from hallufix import figures
from hallufix.analysis import Inspection, LayerCaptures, analyse, average, registered


def _views(session, images, captures: list[LayerCaptures]):
    grid = captures[0].grid
    return grid, (session.adapter.model_view(session.processor, images[0], grid) if grid else None)


def _write_maps(a: LayerCaptures, view, layers, out: Path, stem: str, title: str) -> None:
    maps = a.mean_map()
    payload = {"grid": a.grid, "layers": list(range(maps.shape[0])), "head_average": maps.tolist()}
    (out / f"{stem}.json").write_text(json.dumps(payload))
    if view is not None:
        figures.layer_maps(view, maps.numpy(), a.grid, layers, out / f"{stem}.png", f"{title}: all heads")
    else:  # no spatial grid (InstructBLIP's query tokens): a layer x token matrix
        plt = figures.require_matplotlib()
        fig, ax = plt.subplots(figsize=(6, 3))
        im = ax.imshow(maps.numpy(), aspect="auto")
        ax.set_xlabel("visual token (no spatial grid)")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, label="attention to the token")
        ax.set_title(title, fontsize=9)
        figures.save(fig, out / f"{stem}.png")


def _write_curves(c: dict, out: Path, stem: str, title: str) -> None:
    with (out / f"{stem}.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer"] + list(c))
        for i in range(len(c["entropy"])):
            w.writerow([i] + [c[k][i] for k in c])
    figures.curves(c, out / f"{stem}.png", title)


def write_inspection(session, images, questions, out: Path, plugins=(), overrides=None, lambda_vis: float = 1.0,
                     layers=None) -> Path:
    """Capture (averaging over all given samples), write the core's figures, run every registered ``inspect``
    analysis, and write ``index.md``; returns its path. ``lambda_vis`` is handed to the analyses as an option."""
    from hallufix.config import parse_layers

    out.mkdir(parents=True, exist_ok=True)
    off_all, _ = analyse(session, images, questions)
    L = session.info.num_layers
    grid, view = _views(session, images, off_all)
    ins = Inspection(session, list(images), list(questions), out, average(off_all), plugins=list(plugins),
                     overrides=dict(overrides or {}), view=view,
                     layers=parse_layers(layers, L) if layers else list(range(L)),
                     options={"lambda_vis": lambda_vis})
    _write_maps(ins.off, view, ins.layers, out, "maps", "method off" + ins.shown)
    ins.curves_off = ins.off.curves()
    _write_curves(ins.curves_off, out, "curves", "method off")
    lines = [f"# Attention inspection: {session.info.name} ({session.info.family})", "",
             f"{len(images)} sample(s){' (averaged)' if len(images) > 1 else ''}; first question: "
             f"*{questions[0]}*", "", "## Last-row attention over the image, per layer", "", "![](maps.png)", "",
             "Numbers: `maps.json`.", "", "## Per-layer curves", "", "![](curves.png)", "",
             "Numbers: `curves.csv`.", ""]
    if plugins:
        on, diags = analyse(session, images, questions, plugins, overrides)
        ins.on = average(on)
        name = "+".join(map(str, plugins))
        _write_maps(ins.on, view, ins.layers, out, "maps_on", f"with {name}" + ins.shown)
        ins.curves_on = ins.on.curves()
        _write_curves(ins.curves_on, out, "curves_on", f"with {name}")
        figures.curves(ins.curves_off, out / "curves_on_off.png", f"method off vs {name}", compare=ins.curves_on,
                       labels=("method off", f"with {name}"), anchors=anchor_layers(session, plugins, overrides))
        (out / "diagnostics.json").write_text(json.dumps(diags, indent=1, default=str))
        lines += [f"## With {' + '.join(map(str, plugins))}", "", "![](maps_on.png)", "",
                  "Off and on on one axis (dashed: the layers the methods' configs name):", "",
                  "![](curves_on_off.png)", "",
                  "Each method's diagnostics: `diagnostics.json`.", ""]
    for name, info in registered("inspect").items():
        try:
            lines += list(info.load()(ins) or [])
        except Exception as exc:
            raise RuntimeError(f"inspect analysis '{name}' ({info.dist}) failed: {type(exc).__name__}: {exc} — "
                               f"report it to the authors of {info.dist}") from exc
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
