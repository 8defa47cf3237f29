"""A steady host allocator for CPU timing: glibc's ``malloc`` told to keep freed memory instead of returning it.

Why: PyTorch's CPU allocator asks ``malloc`` for every tensor. With glibc's defaults a large block comes from
``mmap`` (or from the top of the heap, which ``free`` trims back to the OS), so the next tensor of that size
touches fresh pages and the kernel faults and zeroes each 4 KiB page on first write. How many pages a generate
re-faults depends on the order of frees (what sits at the heap top), not on the work, so it hits the baseline and
the case of a pair independently. On the CPU LLaVA-shaped model, ``python benchmarks/overhead.py --json --threads 1
--rounds 10 --cases none --max-new-tokens 1`` (one prefill per generate; its ``page_faults`` field) gave a median
of 27,669 minor faults per baseline generate (about 110 MB of pages zeroed) and a 0.468 s baseline with
``--allocator system``, against 3 faults and 0.438 s with ``--allocator steady`` (2026-12-02, one run each).

``steady()`` calls ``mallopt`` so that blocks up to 32 MiB (glibc's largest ``M_MMAP_THRESHOLD`` on 64-bit) come
from the heap and the heap is never trimmed: after the warm-up round every tensor reuses memory that is already
mapped. It is the setting jemalloc or tcmalloc give a long-running inference process, without installing either.
It changes where memory comes from, not what any code computes; the baseline and the case run under the same
setting. Linux with glibc only; ``--allocator system`` in the benchmarks keeps the defaults (the earlier runs in
docs/benchmarks.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util

#: ``mallopt`` parameter numbers (glibc ``malloc.h``)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: glibc's maximum mmap threshold on 64-bit (``HEAP_MAX_SIZE / 2``)
MMAP_THRESHOLD_MAX = 32 * 2**20
#: a trim threshold no heap top reaches here (``mallopt`` takes an ``int``: 2 GiB - 1)
NEVER_TRIM = 2**31 - 1


def steady() -> None:
    """Hold glibc's heap steady for the rest of the process (see the module docstring).

    Raises ``RuntimeError`` naming the fix where the C library is not glibc or refuses the settings."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError) as e:
        raise RuntimeError(f"--allocator steady needs glibc's mallopt ({e}); run with --allocator system") from e
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)):
        raise RuntimeError("mallopt refused M_MMAP_THRESHOLD / M_TRIM_THRESHOLD; run with --allocator system")
