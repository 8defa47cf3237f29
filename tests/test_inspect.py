"""Inspection figures: every figure and data file is written, the data equal the capture utilities' values, and
overlays are aligned with the image grid."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageChops

from hallufix import capture as C
from hallufix import figures
from hallufix import points as P
from hallufix.analysis import analyse
from hallufix.inspect_report import write_inspection
from hallufix.testing import HookRecorder
from hallufix.testing.models import tiny_images, tiny_session
from hallufix_contrast.analysis import MaskVisualAtLayer, suggest_layers


def test_overlay_puts_a_planted_peak_on_its_cell():
    grid = (6, 4)
    view = Image.new("RGB", (40, 60), (128, 128, 128))
    values = np.zeros(24)
    values[2 * 4 + 3] = 1.0  # row 2, column 3
    arr = np.asarray(figures.overlay(view, values, grid)).astype(float)
    red = arr[..., 0] - arr[..., 2]
    ys, xs = np.unravel_index(np.argmax(red), red.shape)
    assert 20 <= ys < 30 and 30 <= xs < 40  # the cell's 10x10 block
    assert red[25, 35] > red[5, 5] + 50


def test_llava_model_view_is_what_the_vision_tower_sees():
    s = tiny_session("llava")
    x, y = np.linspace(0, 1, 120)[None, :, None], np.linspace(0, 1, 90)[:, None, None]
    arr = np.concatenate([x * np.ones((90, 1, 1)), y * np.ones((1, 120, 1)), 0.5 * np.ones((90, 120, 1))], -1)
    arr[30:60, 70:100] = [1.0, 1.0, 0.0]  # a planted block off-centre, in a non-square image
    img = Image.fromarray((arr * 255).astype(np.uint8))
    inputs = s.adapter.inputs(s.processor, [[img]], ["hi"], s.device)
    ip = s.processor.image_processor
    mean, std = torch.tensor(ip.image_mean)[:, None, None], torch.tensor(ip.image_std)[:, None, None]
    seen = (inputs["pixel_values"][0] * std + mean).permute(1, 2, 0).numpy()
    view_img = s.adapter.model_view(s.processor, img, s.info.grid)
    view = np.asarray(view_img, dtype=float) / 255.0
    assert view.shape == seen.shape
    assert np.abs(view - seen).mean() < 0.015
    shifted = np.asarray(ImageChops.offset(view_img, 3, 0), dtype=float) / 255.0
    assert np.abs(shifted - seen).mean() > 3 * np.abs(view - seen).mean()


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_model_view_keeps_planted_region_on_its_cell(family):
    s = tiny_session(family)
    img = Image.new("RGB", (112, 84), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 28, 28))  # top-left corner region
    inputs = s.adapter.inputs(s.processor, [[img]], ["hi"], s.device)
    grid = s.adapter.layout(s.model, inputs, [[img]]).grids[0][0]
    view = s.adapter.model_view(s.processor, img, grid)
    cell_h, cell_w = view.height / grid[0], view.width / grid[1]
    arr = np.asarray(view.convert("L"), dtype=float)
    cells = np.array([[arr[int(r * cell_h):int((r + 1) * cell_h), int(c * cell_w):int((c + 1) * cell_w)].mean()
                       for c in range(grid[1])] for r in range(grid[0])])
    assert np.unravel_index(np.argmax(cells), cells.shape) == (0, 0)
    assert cells[0, 0] > 100 and cells[-1, -1] < 5


def test_inspection_data_equal_capture_utilities(tmp_path):
    s = tiny_session("llava", num_layers=8)
    images, qs = tiny_images(1), ["is there a cat ?"]
    analyses, _ = analyse(s, images, qs)
    a = analyses[0]
    rec = HookRecorder(P.attn_probs([3], rows="text", phases={"prefill"}), keep=True)
    run = s.start([rec])
    run.generate(images, qs, max_new_tokens=1)
    probs = rec.values[0]  # (1, H, R, kv)
    inputs = s.adapter.inputs(s.processor, [[im] for im in images], qs, s.device)
    layout = s.adapter.layout(s.model, inputs, [[im] for im in images])
    vis = layout.visual
    mass = C.visual_mass(probs, vis)[0]  # (H, R)
    assert torch.allclose(a.phi[3], mass.mean(-1), atol=1e-6)
    assert torch.allclose(a.last_map[3], C.gather_visual(probs[:, :, -1], layout.visual_tokens)[0], atol=1e-6)

    index = write_inspection(s, images, qs, tmp_path, ["visual-boost"], {"visual-boost": ["w=4"]})
    for name in ("head_matrix.png", "head_matrix.csv", "maps.png", "maps.json", "maps_sensitive.png",
                 "curves.png", "curves.csv", "maps_on.png", "maps_on.json", "curves_on.png", "diagnostics.json"):
        assert (tmp_path / name).is_file(), name
    assert "![](maps_on.png)" in index.read_text()
    rows = list(csv.reader((tmp_path / "head_matrix.csv").open()))
    assert float(rows[4][3]) == pytest.approx(float(a.phi[3, 0]), abs=1e-6)
    maps = json.loads((tmp_path / "maps.json").read_text())
    assert np.allclose(maps["head_average"][3], a.last_map[3].mean(0).numpy(), atol=1e-6)
    on = json.loads((tmp_path / "maps_on.json").read_text())
    assert not np.allclose(on["head_average"], maps["head_average"])  # the method moved the maps


def test_layer_masking_hides_visual_tokens_from_text_rows():
    s = tiny_session("llava")
    rec = HookRecorder(P.attn_probs([1], rows="text", phases={"prefill"}), keep=True)
    run = s.start([MaskVisualAtLayer(1), rec])
    run.generate(tiny_images(1), ["is there a cat ?"], max_new_tokens=2)
    inputs = s.adapter.inputs(s.processor, [tiny_images(1)], ["is there a cat ?"], s.device)
    vis = s.adapter.layout(s.model, inputs, [tiny_images(1)]).visual
    assert float(C.visual_mass(rec.values[0], vis).max()) == 0.0


def test_layer_suggestion():
    acc = [0.9, 0.6, 0.88, 0.7, 0.9, 0.9, 0.9, 0.8, 0.9, 0.9]
    s = suggest_layers(acc, 0.9, 10)
    assert s["fusion_layers"] == [1, 3] and s["review_layer"] == 7


def test_figures_come_as_png_pdf_svg_with_colour_bar_and_error_bars(tmp_path):
    """Issue 20: paper formats beside every PNG; the masking curve carries 95% Wilson error bars."""
    pytest.importorskip("matplotlib")
    from hallufix import figures

    figures.masking_curve([1.0, 0.5, 0.8], 0.92, {"fusion_layers": [1]}, tmp_path / "m.png", n=50)
    assert {p.suffix for p in tmp_path.iterdir()} == {".png", ".pdf", ".svg"}
    lo, hi = figures.wilson(0.5, 50)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.27, abs=0.01)
    from PIL import Image

    view = Image.new("RGB", (40, 40), (200, 200, 200))
    over = figures.overlay(view, [0.0, 0.0, 0.0, 1.0], (2, 2))
    assert over.getpixel((5, 5)) == (200, 200, 200)  # the lowest cell shows the image, not a blue tint
    assert over.getpixel((35, 35))[0] > over.getpixel((35, 35))[2]  # the highest is red
    figures.curves({"entropy": [1.0, 2.0]}, tmp_path / "c.png", compare={"entropy": [1.5, 1.0]}, anchors=[1])
    assert (tmp_path / "c.svg").is_file()
