"""Temporary weight edits, restored bit-exactly: the installer behind folding per-head gains into ``o_proj``.

A fold points the parameter at a scaled copy; the original tensor is never written, so removing is a pointer swap
back to it (one pass over the weight instead of clone + scale + copy back) and bit-exact by construction.

The scaled copy is written into a buffer that outlives the call when the owner passes a ``pool`` (a
:class:`~hallufix.api.MethodRun` keeps one per run: one buffer per folded weight, the size of that weight, reused by
every call). Allocating and freeing the copies in every call instead cost about 30 ms per prefill on the CPU
benchmark model (eight 1 MB ``o_proj`` copies: the host allocator hands the freed pages back and faults fresh ones
in, which slows the other layers' allocations too; ``benchmarks/overhead.py --cases fhi``, docs/benchmarks.md, run
I). On CUDA the caching allocator keeps such blocks reserved anyway, so the pool costs no extra memory there.
"""
from __future__ import annotations

import torch


class WeightFolds:
    """Installer collecting weight edits made during a call (:meth:`scale_columns`); :meth:`remove` restores every
    edited parameter's original tensor, newest first. ``install`` has nothing to do: edits happen when asked."""

    def __init__(self, pool: dict | None = None):
        self._saved: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        #: parameter -> its reusable scaled-copy buffer (``None``: a fresh copy per fold)
        self._pool = pool

    def install(self) -> None:
        pass

    def _buffer(self, weight: torch.nn.Parameter) -> torch.Tensor | None:
        if self._pool is None:
            return None
        buf = self._pool.get(weight)
        data = weight.data
        if buf is None or buf.shape != data.shape or buf.dtype != data.dtype or buf.device != data.device:
            buf = self._pool[weight] = torch.empty_like(data)
        return buf

    def scale_columns(self, weight: torch.nn.Parameter, col: torch.Tensor) -> None:
        """``weight (out, in)`` times ``col (in,)`` per input column until :meth:`remove` (``col`` in the
        weight's dtype and device). A second fold of the same weight in one call scales the first one's copy."""
        self._saved.append((weight, weight.data))
        with torch.no_grad():
            buf = self._buffer(weight)
            if buf is None:
                weight.data = weight.data * col[None, :]
            else:  # out= may alias the input (a second fold of this weight): an element-wise product, safe
                torch.mul(weight.data, col[None, :], out=buf)
                weight.data = buf

    def remove(self) -> None:
        for param, original in reversed(self._saved):
            param.data = original  # the untouched original tensor comes back: bit-exact, no copy
        self._saved.clear()
