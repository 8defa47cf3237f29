"""Tiny random models of the four real classes as ready :class:`~hallufix.api.Session` objects, plus
deterministic images and prompts. Built once per process (per family and shape) and cached."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

QUESTIONS = ("is there a cat in the image ?", "what colour is the large object on the left side ?",
             "describe the picture", "how many dogs are there ?")


@lru_cache(maxsize=None)
def tiny_session(family: str, **shape):
    """A :class:`~hallufix.api.Session` over ``hallufix.models.tiny.build_tiny(family, **shape)`` (cached)."""
    from hallufix.api import Session
    from hallufix.models.tiny import build_tiny

    model, processor = build_tiny(family, **shape)
    return Session(model, processor, name=f"tiny-{family}")


def tiny_images(n: int = 2, size: int = 56, seed: int = 0) -> list[Image.Image]:
    """``n`` deterministic RGB noise images of ``size`` x ``size`` with a bright square each (a planted object)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arr = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
        a = (7 * i) % (size // 2)
        arr[a:a + size // 4, a:a + size // 4] = 255
        out.append(Image.fromarray(arr))
    return out
