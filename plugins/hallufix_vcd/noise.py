"""VCD's image distortion: the forward diffusion process q(x_t | x_0) of DDPM applied to the processor's
normalised pixels (Leng et al., CVPR 2024, Sec. 3.2, Eq. 3-4; the schedule of the official repository's
``vcd_utils/vcd_add_noise.py``):

    beta_t   = 1e-5 + (5e-3 - 1e-5) * sigmoid(linspace(-6, 6, 1000))_t          t = 0 .. 999
    abar_t   = prod_{s <= t} (1 - beta_s)
    x_t      = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps,     eps ~ N(0, I)

The noise of each image comes from its own generator, seeded from the configured seed and the image's pixels, so a
row gets the same noise in any batch, in any order, on any device (drawn in float32 on the host).
"""
from __future__ import annotations

import functools
import hashlib

import torch

NUM_STEPS = 1000


@functools.lru_cache(maxsize=None)
def alpha_bar(step: int) -> float:
    """``abar_t`` of the schedule at ``step`` (0-based, 0..999), in float32 as the official code computes it."""
    if not 0 <= step < NUM_STEPS:
        raise ValueError(f"noise_step must be in [0, {NUM_STEPS - 1}], got {step}")
    betas = torch.sigmoid(torch.linspace(-6, 6, NUM_STEPS)) * (0.5e-2 - 1e-5) + 1e-5
    return float(torch.cumprod(1 - betas, 0)[step])


def image_seed(image, seed: int) -> int:
    """A 63-bit seed from ``seed`` and the image's mode, size and pixel bytes."""
    h = hashlib.sha256(f"{seed}:{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


def diffuse(x0: torch.Tensor, step: int, seed: int) -> torch.Tensor:
    """``x_t`` for float32 host pixels ``x0`` (any shape) with noise from ``torch.Generator().manual_seed(seed)``."""
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float32)
    ab = torch.tensor(alpha_bar(step), dtype=torch.float32)
    return torch.sqrt(ab) * x0.float() + torch.sqrt(1 - ab) * eps
