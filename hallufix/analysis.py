"""The generic per-layer captures behind ``hallufix inspect``, and the dispatch to the analyses plugins register.

Everything is measured with the same probe hook points the methods use (no eager model): at prefill, every
layer's text rows are probed once; from them come, per layer and head, the visual attention mass averaged over the
text rows (``phi``), and the last row's attention over the visual tokens (``last_map``).

Method-specific readings of these captures (CLVA's head split and drift curves, contrast's layer knock-out) live in
their plugins and are registered through ``hallufix_register_analyses`` (:mod:`hallufix.hookspecs`):

* an ``inspect`` analysis is ``fn(inspection: Inspection) -> list[str]``: it reads :class:`Inspection` (the captures
  with the stack off and on, the image as the model sees it, the output folder), writes its files there and returns
  the Markdown lines of its section of ``index.md``; ``hallufix inspect`` runs every registered one;
* a ``task`` analysis is ``fn(session, task_spec, out, **options) -> dict``, run by ``hallufix analyze NAME``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hallufix import capture as C
from hallufix import hookimpl
from hallufix import points as P


class LayerProbe:
    """Internal probe method: records, per layer at prefill, ``phi (B, H)`` (mean visual mass over the text rows)
    and ``last_map (B, H, n)`` (the last row's attention over the visual tokens). Placed last in a stack, it sees
    the probabilities after every other method's edits (the "method on" view)."""

    name = "hallufix-inspect"

    def __init__(self, layers: list[int] | None = None):
        self.layers = layers
        self.phi: dict[int, torch.Tensor] = {}
        self.last_map: dict[int, torch.Tensor] = {}
        self.grids: list = []

    @hookimpl
    def hallufix_configure(self, model):
        layers = self.layers if self.layers is not None else range(model.num_layers)
        return P.attn_probs(layers, rows="text", phases={"prefill"})

    @hookimpl
    def hallufix_attn_probs(self, event):
        probs = event.probs.float()  # (B, H, R, kv)
        mass = C.visual_mass(probs, event.visual_keys)  # (B, H, R)
        text = event.row_mask("text").float()  # (B, R)
        self.phi[event.layer] = (mass * text[:, None]).sum(-1) / text.sum(-1).clamp(min=1)[:, None]
        self.last_map[event.layer] = C.gather_visual(event.last(), event.visual)  # (B, H, n_max)
        self.visual = event.visual
        self.grids = event.layout.grids


@dataclass
class LayerCaptures:
    """Per-sample (or averaged) layer-wise captures, all tensors on CPU, float32.

    Attributes:
        phi: ``(L, H)`` visual attention mass per head, averaged over the text rows.
        last_map: ``(L, H, n)`` the last row's attention over the visual tokens per head.
        grid: ``(rows, cols)`` of the visual tokens, or ``None`` (no spatial grid).
    """

    phi: torch.Tensor
    last_map: torch.Tensor
    grid: tuple[int, int] | None

    def mean_map(self, heads: torch.Tensor | None = None) -> torch.Tensor:
        """``(L, n)`` last-row map averaged over all heads or a per-layer head subset ``(L, H)`` bool."""
        if heads is None:
            return self.last_map.mean(1)
        w = heads.float()
        return (self.last_map * w[..., None]).sum(1) / w.sum(1).clamp(min=1)[:, None]

    def curves(self) -> dict[str, list[float]]:
        """Per-layer curves of the last row's head-averaged map: its entropy (nats) and its visual mass."""
        maps = self.mean_map()
        return {"entropy": C.entropy(maps).tolist(), "visual_mass": maps.sum(-1).tolist()}


def analyse(session, images, questions, plugins=(), overrides=None) -> tuple[list[LayerCaptures], list[dict]]:
    """One prefill per batch with every layer probed (after the stack's edits) -> one capture per row, and the
    stack's per-row diagnostics."""
    probe = LayerProbe()
    run = session.start(list(plugins) + [probe], overrides or {})
    outs = run.generate(images, questions, max_new_tokens=1)
    info = session.info
    results = []
    for b in range(len(images)):
        phi = torch.stack([probe.phi[i][b] for i in range(info.num_layers)]).cpu()
        own = probe.visual.image_slots(b, 0)  # the row's (first) image, without padded slots
        maps = torch.stack([probe.last_map[i][b, :, own] for i in range(info.num_layers)]).cpu()
        results.append(LayerCaptures(phi, maps, probe.visual.grid(b, 0)))
    return results, [o.diagnostics for o in outs]


def average(captures: list[LayerCaptures]) -> LayerCaptures:
    """Mean over samples (same model, same visual token count); a single capture is returned as is."""
    if len(captures) == 1:
        return captures[0]
    shapes = {tuple(a.last_map.shape) for a in captures}
    if len(shapes) > 1:
        raise ValueError(f"cannot average maps over images with different visual-token grids ({sorted(shapes)}); "
                         f"inspect images of one size (Qwen gives every image size its own grid) or one at a time")
    return LayerCaptures(torch.stack([a.phi for a in captures]).mean(0),
                         torch.stack([a.last_map for a in captures]).mean(0), captures[0].grid)


@dataclass
class Inspection:
    """What an ``inspect`` analysis receives.

    Attributes:
        session: the loaded :class:`~hallufix.api.Session` (``session.info`` for the model's shape).
        images, questions: the inspected samples.
        out: the output folder (write files here; name them after the analysis to avoid clashes).
        off: the averaged :class:`LayerCaptures` with no method active; ``on``: with the stack on, else ``None``.
        plugins, overrides: the stack (``[]`` when none) and its per-method overrides.
        view: the first image as the vision tower sees it (a PIL image a map over ``off.grid`` aligns with), or
            ``None`` where the visual tokens have no grid.
        layers: the layers to draw maps for (0-based).
        options: the inspection's options (``lambda_vis``: the head-split width asked for on the command line).
        curves_off, curves_on: the core's per-layer curves (entropy, visual mass); an analysis may add its own.
    """

    session: Any
    images: list
    questions: list[str]
    out: Path
    off: LayerCaptures
    on: LayerCaptures | None = None
    plugins: list = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    view: Any = None
    layers: list[int] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    curves_off: dict = field(default_factory=dict)
    curves_on: dict | None = None

    @property
    def shown(self) -> str:
        """A title suffix saying what an averaged map is drawn on ("" for one sample)."""
        n = len(self.images)
        return "" if n == 1 else f" (mean over {n} samples, drawn on the first image)"


def registered(kind: str | None = None) -> dict:
    """The analyses installed plugins register (``kind``: only those of that kind), by name:
    :class:`hallufix.plugins.AnalysisInfo` values."""
    from hallufix.plugins import AnalysisInfo, discover  # noqa: F401  (AnalysisInfo: what the values are)

    found = discover().analyses
    return {n: a for n, a in sorted(found.items()) if kind is None or a.kind == kind}


def run_task_analysis(name: str, session, task_spec: str, out: Path, **options) -> dict:
    """Run the registered ``task`` analysis ``name`` (``hallufix analyze NAME``)."""
    found = registered("task")
    if name not in found:
        known = ", ".join(found) or "none (install the plugin that provides it)"
        raise ValueError(f"unknown analysis '{name}'; registered task analyses: {known}")
    return found[name].load()(session, task_spec, out, **options)
