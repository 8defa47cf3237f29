"""CLVA's reading of ``hallufix inspect``'s captures: the head split (Eq. 2-3) and the drift curves.

Registered as the ``inspect`` analysis ``clva-drift`` (:func:`drift`). From the core's per-layer captures
(:class:`hallufix.analysis.LayerCaptures`: ``phi (L, H)``, ``last_map (L, H, n)``) it writes

* ``head_matrix.png`` / ``.csv``: ``phi`` per layer and head with the sensitive / insensitive thresholds
  ``mean ± lambda·std`` within each layer (``lambda`` from the inspection's ``lambda_vis`` option);
* ``maps_sensitive.png`` / ``.json`` (and ``maps_on_sensitive.*`` with the stack on): the last row's maps averaged
  over each layer's sensitive heads;
* ``drift.png`` / ``.csv``: per layer, the Pearson correlation of the head-averaged map with the negative anchor
  (``neg_layer``'s insensitive heads) and the positive anchor (``pos_layer``'s sensitive heads); off and on on one
  axis when a stack is on. The anchor layers are CLVA's own defaults for the model (:func:`resolve_layers`).
"""
from __future__ import annotations

import csv
import json

import torch

from hallufix import figures
from hallufix_clva.method import Config, resolve_layers


def thresholds(phi: torch.Tensor, lambda_vis: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L,)`` upper (sensitive) and lower (insensitive) thresholds: mean ± lambda·std (population) per layer."""
    mu, sd = phi.mean(1), phi.std(1, unbiased=False)
    return mu + lambda_vis * sd, mu - lambda_vis * sd


def head_sets(phi: torch.Tensor, lambda_vis: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, H)`` bool: sensitive and insensitive heads (Eq. 2-3)."""
    hi, lo = thresholds(phi, lambda_vis)
    return phi > hi[:, None], phi < lo[:, None]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two flat vectors (0 when either is constant)."""
    a, b = a.flatten().double() - a.double().mean(), b.flatten().double() - b.double().mean()
    den = (a.norm() * b.norm()).item()
    return float((a @ b).item() / den) if den > 0 else 0.0


def drift_curves(captures, lambda_vis: float, neg_layer: int, pos_layer: int) -> dict[str, list[float]]:
    """Per layer: correlation of the head-averaged last-row map with the negative anchor (``neg_layer``,
    insensitive heads) and with the positive anchor (``pos_layer``, sensitive heads)."""
    sens, insens = head_sets(captures.phi, lambda_vis)
    maps = captures.mean_map()
    neg = captures.mean_map(insens)[neg_layer]
    pos = captures.mean_map(sens)[pos_layer]
    return {"corr_negative_anchor": [pearson(m, neg) for m in maps],
            "corr_positive_anchor": [pearson(m, pos) for m in maps]}


def _write_sensitive_maps(ins, captures, lambda_vis: float, stem: str, title: str) -> None:
    sens, _ = head_sets(captures.phi, lambda_vis)
    maps = captures.mean_map(sens)
    (ins.out / f"{stem}.json").write_text(json.dumps({"grid": captures.grid, "lambda_vis": lambda_vis,
                                                      "sensitive_heads": maps.tolist()}))
    if ins.view is not None:
        figures.layer_maps(ins.view, maps.numpy(), captures.grid, ins.layers, ins.out / f"{stem}.png",
                           f"{title}: sensitive heads")


def _write_drift(ins, curves: dict, stem: str, compare: dict | None, labels) -> None:
    with (ins.out / f"{stem}.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer"] + list(curves))
        for i in range(len(next(iter(curves.values())))):
            w.writerow([i] + [curves[k][i] for k in curves])
    figures.curves(curves, ins.out / f"{stem}.png", "CLVA drift: correlation with the anchor maps",
                   compare=compare, labels=labels)


def drift(ins) -> list[str]:
    """The ``clva-drift`` inspect analysis (see the module docstring); returns its ``index.md`` section."""
    lam = float(ins.options.get("lambda_vis", Config.lambda_vis))
    L = ins.session.info.num_layers
    neg, pos, _ = resolve_layers(Config(), L)
    off = ins.off
    hi, lo = thresholds(off.phi, lam)
    with (ins.out / "head_matrix.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "upper", "lower"] + [f"head{h}" for h in range(off.phi.shape[1])])
        for i in range(L):
            w.writerow([i, float(hi[i]), float(lo[i])] + off.phi[i].tolist())
    figures.head_matrix(off.phi.numpy(), hi.numpy(), lo.numpy(), ins.out / "head_matrix.png")
    _write_sensitive_maps(ins, off, lam, "maps_sensitive", "method off" + ins.shown)
    curves_off = drift_curves(off, lam, neg, pos)
    lines = ["## CLVA: visual attention intensity per head", "",
             f"Sensitive (+) and insensitive (−) heads at mean ± {lam:g}·std per layer (CLVA Eq. 2-3).", "",
             "![](head_matrix.png)", "", "Numbers: `head_matrix.csv`.", ""]
    if ins.view is not None:
        lines += ["Last-row maps over the sensitive heads only:", "", "![](maps_sensitive.png)", ""]
    compare, labels = None, ("method off", "method on")
    if ins.on is not None:
        name = "+".join(map(str, ins.plugins))
        _write_sensitive_maps(ins, ins.on, lam, "maps_on_sensitive", f"with {name}" + ins.shown)
        compare, labels = drift_curves(ins.on, lam, neg, pos), ("method off", f"with {name}")
    _write_drift(ins, curves_off, "drift", compare, labels)
    lines += ["## CLVA: drift curves", "",
              f"Correlation of each layer's head-averaged map with the negative anchor (layer {neg}, insensitive "
              f"heads) and the positive anchor (layer {pos}, sensitive heads), CLVA's default layers for "
              f"{L} layers.", "", "![](drift.png)", "", "Numbers: `drift.csv`.", ""]
    return lines
