"""Tiny random models of the four real classes as ready :class:`~hallufix.api.Session` objects, plus
deterministic images and prompts. Built once per process (per family, shape, dtype and device) and cached.

The test device is ``HALLUFIX_TEST_DEVICE`` (default ``cpu``; e.g. ``cuda`` or ``cuda:1``), so one suite runs on
the CPU in CI and on a GPU with ``HALLUFIX_TEST_DEVICE=cuda`` (``benchmarks/gpu_check.sh``); on a GPU, float32
kernels are kept IEEE float32 (no TF32) while tiny sessions are built.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from PIL import Image

QUESTIONS = ("is there a cat in the image ?", "what colour is the large object on the left side ?",
             "describe the picture", "how many dogs are there ?")

#: ``(width, height)`` of the mixed-size images, cycled: a square, landscape 4:3, portrait 3:5 and a 2:1
#: panorama above the pixel cap. On Qwen at the default 56 px minimum side (3,136-12,544 pixels) these give 4,
#: 12, 15 and 10 visual tokens (merged grids (2, 2), (3, 4), (5, 3), (2, 5); the panorama is scaled down to
#: 56x140). 168x112, the size in issue 13's report, is scaled onto 112x84's grid, so it would not add a count.
MIXED_SIZES = ((56, 56), (112, 84), (84, 140), (224, 112))
#: PIL modes of the mixed images, cycled: what files on disk decode to (JPEG RGB / greyscale, PNG with alpha,
#: palette GIF/PNG). The pipeline converts them to RGB.
MIXED_MODES = ("RGB", "L", "RGBA", "P")


def device_for_tests() -> str:
    """The device tests run on: ``$HALLUFIX_TEST_DEVICE`` or ``cpu``."""
    return os.environ.get("HALLUFIX_TEST_DEVICE", "").strip() or "cpu"


def tiny_session(family: str, shape: str = "default", dtype: str = "float32", device: str | None = None, **dims):
    """A cached :class:`~hallufix.api.Session` over ``hallufix.models.tiny.build_tiny(family, shape=shape,
    dtype=dtype, **dims)`` on ``device`` (default :func:`device_for_tests`).

    ``shape="real"`` gives the 7B checkpoints' depth and head / KV-head counts at a small width; ``dtype`` is
    ``float32``, ``bfloat16`` or ``float16``. The same session object is returned for the same arguments."""
    return _cached_session(family, shape, str(dtype).replace("torch.", ""), device or device_for_tests(),
                           tuple(sorted(dims.items())))


@lru_cache(maxsize=None)
def _cached_session(family, shape, dtype, device, dims):
    from hallufix.api import Session
    from hallufix.models.tiny import build_tiny

    model, processor = build_tiny(family, shape=shape, dtype=dtype, **dict(dims))
    if device.startswith("cuda"):
        _ieee_float32_on_cuda()
    name = f"tiny-{family}" + ("" if shape == "default" else f"-{shape}") + ("" if dtype == "float32" else
                                                                            f"-{dtype}")
    return Session(model.to(device), processor, name=name)


tiny_session.cache_clear = _cached_session.cache_clear


def _ieee_float32_on_cuda() -> None:
    """float32 means float32 in tests on a GPU: cuDNN convolutions (the vision towers' patch embeddings) default to
    TF32 (10-bit mantissa), which would put batched-vs-single differences far above the float32 tolerance."""
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def tiny_images(n: int = 2, size: int = 56, seed: int = 0, *, mixed: bool = False) -> list[Image.Image]:
    """``n`` deterministic noise images with a bright square each (a planted object).

    Default: RGB squares of ``size`` x ``size`` (the first fixtures; kept bitwise as they were).
    ``mixed=True``: what users bring -- image ``i`` has size ``MIXED_SIZES[i % 4]`` scaled by ``size / 56`` and
    PIL mode ``MIXED_MODES[i % 4]`` (RGB, L, RGBA with a non-trivial alpha, P with an adaptive palette), so one
    batch of 4 holds four sizes, three aspect ratios and four modes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (size, size) if not mixed else (MIXED_SIZES[i % 4][0] * size // 56, MIXED_SIZES[i % 4][1] * size // 56)
        arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        side = min(w, h)
        a = (7 * i) % (side // 2)
        arr[a:a + side // 4, a:a + side // 4] = 255
        img = Image.fromarray(arr)
        if mixed:
            img = _to_mode(img, MIXED_MODES[i % 4], rng)
        out.append(img)
    return out


def _to_mode(img: Image.Image, mode: str, rng) -> Image.Image:
    if mode == "L":
        return img.convert("L")
    if mode == "RGBA":
        alpha = rng.integers(128, 256, size=(img.height, img.width), dtype=np.uint8)
        rgba = img.convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha))
        return rgba
    if mode == "P":
        return img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return img
