"""Temporary weight edits, restored bit-exactly: the installer behind folding per-head gains into ``o_proj``.

A fold points the parameter at a scaled copy; the original tensor is never written, so removing is a pointer swap
back to it (one pass over the weight instead of clone + scale + copy back) and bit-exact by construction.
"""
from __future__ import annotations

import torch


class WeightFolds:
    """Installer collecting weight edits made during a call (:meth:`scale_columns`); :meth:`remove` restores every
    edited parameter's original tensor, newest first. ``install`` has nothing to do: edits happen when asked."""

    def __init__(self):
        self._saved: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def install(self) -> None:
        pass

    def scale_columns(self, weight: torch.nn.Parameter, col: torch.Tensor) -> None:
        """``weight (out, in)`` times ``col (in,)`` per input column until :meth:`remove` (``col`` in the
        weight's dtype and device)."""
        self._saved.append((weight, weight.data))
        with torch.no_grad():
            weight.data = weight.data * col[None, :]

    def remove(self) -> None:
        for param, original in reversed(self._saved):
            param.data = original  # the untouched original tensor comes back: bit-exact, no copy
        self._saved.clear()
