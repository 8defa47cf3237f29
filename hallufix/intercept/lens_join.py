"""Prefetched logit-lens rows ride on the model's own ``lm_head`` call (:meth:`LensEvent.prefetch`).

Two hooks on the head module (through :class:`~hallufix.intercept.module_hooks.ModuleHooks`), installed when a
``logit_lens`` point is declared:

* the forward pre-hook takes the forward's pending rows (``(R, d)``, normed or raw as each event asked), checks
  that they can join (below), keeps the head's input ``x`` ``(B, T, d)`` (``T = 1`` when ``generate`` keeps only
  the last position at prefill and at every decode step, ``T = P`` for a full prefill) and hands the module an
  empty ``(0, d)`` input, so its own forward computes nothing;
* the forward hook (run before any other forward hook of the module) computes ``F.linear`` of ``x`` and of the
  rows in one pass over the weight (:func:`joint_linear`), delivers ``(R, V)`` float32 to the events and returns
  the model's ``(B, T, V)`` logits.

The model's logits must be what the head gives alone, bit for bit. Whether a matmul rounds a row the same inside
another product depends on the kernel, the dtype, the row count, the thread count and even the input's layout (on
a CPU, float32 ``F.linear`` of one row is a matrix-vector kernel that rounds differently from the same row inside a
several-row product, and a strided ``(B, 1, d)`` input differently from its 2-D reshape; bfloat16 products are
row-independent). So the model's rows are always ``F.linear`` of the head's input exactly as the head got it, and
each join is *probed*: once per (strategy, device, dtype, weight shape, bias, head input shape and layout, lens
row count, threads), seeded random rows through the head alone and through the join, compared bitwise; a failed
probe leaves the rows to a separate product. Strategies:

* ``chunked`` (CPU): for each block of the weight's output rows small enough to stay in cache, the model's rows
  (``F.linear`` of exactly the head's input, as the head would run it) and then the lens rows; the second product
  reads the block from cache, not from memory. CPU kernels for a few rows are compute-bound, so stacking rows into
  one product would cost more than this (docs/methods/dola.md has the measurements).
* ``stacked`` (accelerators): one ``F.linear`` of ``cat(x, rows)``, split afterwards (memory-bound there: the extra
  rows are close to free).

Rows do not join (and :meth:`LensEvent.logits` falls back to one separate product) when the head is not exactly
``torch.nn.Linear``, carries an accelerate offload hook, its weight, input and rows are not on one device in one
dtype, or the head's input has more than :data:`MAX_JOIN_ROWS` rows (a full prefill of a long batch: there the
head's own product dwarfs the lens rows, and a probe would cost as much as the product).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hallufix.events_lens import PREFETCH_KEY, LogitLens

#: largest head input (rows of ``x`` flattened) the lens rows join
MAX_JOIN_ROWS = 256
#: bytes of one weight block in the chunked strategy (a block and its outputs stay in a core's cache)
CHUNK_BYTES = 1 << 20
#: probe results: key -> bool (the join keeps the model's rows bitwise)
_PROBED: dict[tuple, bool] = {}


def strategy_for(device: torch.device) -> str:
    return "chunked" if device.type == "cpu" else "stacked"


def _chunk_rows(weight: torch.Tensor) -> int:
    rows = CHUNK_BYTES // (weight.shape[1] * weight.element_size())
    return max(64, rows // 64 * 64)


def joint_linear(x: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor, bias, strategy: str):
    """``(F.linear(x, weight, bias), F.linear(rows, weight, bias))`` for the head's input ``x`` ``(..., d)`` (as
    the head got it: shape and strides matter to the kernel) and ``rows`` ``(R, d)`` in one pass over ``weight``
    ``(V, d)``: ``(..., V)`` and ``(R, V)`` in the weight's dtype."""
    if strategy == "stacked":
        flat = x.reshape(-1, x.shape[-1])
        out = F.linear(torch.cat([flat, rows]), weight, bias)
        return out[: flat.shape[0]].view(*x.shape[:-1], weight.shape[0]), out[flat.shape[0]:]
    step = _chunk_rows(weight)
    model, lens = [], []
    for start in range(0, weight.shape[0], step):
        w = weight[start:start + step]
        b = None if bias is None else bias[start:start + step]
        model.append(F.linear(x, w, b))  # exactly the head's call, on a block of its output rows
        lens.append(F.linear(rows, w, b))
    return torch.cat(model, -1), torch.cat(lens, -1)


def joins_bitwise(weight: torch.Tensor, bias, x: torch.Tensor, r: int, strategy: str) -> bool:
    """Whether :func:`joint_linear` gives what the head gives alone (``F.linear(x, weight, bias)``, ``x`` of the
    head input's shape ``(..., d)``) bit for bit, for ``r`` lens rows, on this device, dtype and thread count.

    Probed once with seeded random rows laid out as ``x`` (the same shape; rows contiguous or, like the last
    position sliced out of a prefill, strided), then cached."""
    m, d = x.numel() // x.shape[-1], x.shape[-1]
    contiguous = x.reshape(-1, d).is_contiguous()
    key = (strategy, weight.device, weight.dtype, tuple(weight.shape), weight.stride(), bias is not None,
           tuple(x.shape), contiguous, r, torch.get_num_threads())
    if key not in _PROBED:
        g = torch.Generator().manual_seed(0)  # its own generator: the run's random state is untouched
        buf = torch.randn(m, d if contiguous else 2 * d, generator=g).to(weight.device, weight.dtype)
        xp = buf[:, :d].unflatten(0, tuple(x.shape[:-1]))  # rows of stride d (contiguous) or 2 d (strided)
        rows = torch.randn(r, d, generator=g).to(weight.device, weight.dtype)
        with torch.no_grad():
            alone = F.linear(xp, weight, bias)
            joined, _ = joint_linear(xp, rows, weight, bias, strategy)
        _PROBED[key] = torch.equal(alone, joined)
    return _PROBED[key]


class HeadJoin:
    """The two ``lm_head`` hooks of one installation (see the module docstring). ``st``: the interceptor (its
    ``forward`` is the current forward); ``lens``: the run's :class:`LogitLens`."""

    def __init__(self, st, lens: LogitLens):
        self.st, self.lens = st, lens
        self._job = None

    def install(self, hooks) -> None:
        hooks.pre(self.lens.lm_head, self.pre, with_kwargs=True)
        hooks.post(self.lens.lm_head, self.post, with_kwargs=True, prepend=True)

    def _joinable(self, module, x: torch.Tensor, rows: torch.Tensor) -> str | None:
        if type(module) is not torch.nn.Linear or hasattr(module, "_hf_hook"):
            return None
        w = module.weight
        if not (x.device == rows.device == w.device and x.dtype == rows.dtype == w.dtype):
            return None
        m = x.numel() // x.shape[-1]
        if m == 0 or m > MAX_JOIN_ROWS:
            return None
        strategy = strategy_for(w.device)
        return strategy if joins_bitwise(w, module.bias, x, rows.shape[0], strategy) else None

    def pre(self, module, args, kwargs):
        fwd = self.st.forward
        if self.lens.busy or fwd is None or not fwd.memo.get(PREFETCH_KEY):
            return None
        x = args[0] if args else kwargs.get("input")
        if x is None:
            return None
        pending = fwd.memo[PREFETCH_KEY]
        rows = torch.cat([self.lens.rows(ev.hidden, norm=n) for ev, n in pending])
        strategy = self._joinable(module, x, rows)
        if strategy is None:
            return None  # LensEvent.logits computes the pending rows separately
        fwd.memo[PREFETCH_KEY] = []
        self._job = (x, rows, list(pending), strategy)
        empty = x.new_empty((0, x.shape[-1]))  # the module's own forward then computes nothing
        return ((empty,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "input": empty})

    def post(self, module, args, kwargs, output):
        if self._job is None:
            return None
        x, rows, pending, strategy = self._job
        self._job = None
        model, lens = joint_linear(x, rows, module.weight, module.bias, strategy)
        for (ev, n), part in zip(pending, lens.float().split([ev.hidden.shape[0] for ev, _ in pending])):
            ev.deliver(n, part)
        return model
