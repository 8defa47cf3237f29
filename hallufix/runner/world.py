"""The processes of a run: one, or the ranks a launcher started (``torchrun``, ``accelerate launch``).

The launchers export ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`current` reads them and joins ``torch.distributed``'s default group (gloo for a CPU run, nccl for CUDA) —
no process pool and no networking of hallufix's own. The only collective used is :meth:`World.barrier`.

Sharding (:meth:`World.owns`): a cell's samples are cut into the batches a single process would run (task order,
``batch_size`` each) and batch ``b`` belongs to rank ``b % world_size``, so every batch — left padding included —
is the very batch one process runs, and the answers are byte-identical to one process. With
``HALLUFIX_DISTRIBUTE=cells`` whole cells are spread instead (cell ``c`` on rank ``c % world_size``): for grids of
many cells, each rank writes its own cells' directories exactly as a single process would.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

#: How long a rank waits at a barrier for the others (a rank resuming a nearly finished shard waits for the rest).
BARRIER_TIMEOUT = timedelta(hours=float(os.environ.get("HALLUFIX_BARRIER_TIMEOUT_H", "12")))


@dataclass(frozen=True)
class World:
    """``rank`` of ``size`` processes; ``local_rank`` picks this process's GPU; ``by`` is ``"samples"`` or
    ``"cells"`` (what is spread over the ranks)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    by: str = "samples"

    @property
    def sharded(self) -> bool:
        """Whether this cell's samples are split over several ranks."""
        return self.size > 1 and self.by == "samples"

    def owns(self, batch_index: int) -> bool:
        """Whether global batch ``batch_index`` of a cell is this rank's (always, for one process)."""
        return not self.sharded or batch_index % self.size == self.rank

    def owns_cell(self, cell_index: int) -> bool:
        return self.size == 1 or self.by != "cells" or cell_index % self.size == self.rank

    def device(self, device: str | None) -> str | None:
        """``cuda`` -> ``cuda:<local_rank>`` under several ranks (one GPU each); anything else unchanged."""
        if self.size > 1 and device in ("cuda", "gpu"):
            return f"cuda:{self.local_rank}"
        return device

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def current(device: str | None = None) -> World:
    """This process's :class:`World` from the launcher's environment; joins the process group when there are
    several ranks (``device``: the run's device, choosing nccl for CUDA, gloo otherwise)."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    by = os.environ.get("HALLUFIX_DISTRIBUTE", "samples").strip().lower() or "samples"
    if by not in ("samples", "cells"):
        from hallufix.config import ConfigError

        raise ConfigError(f"HALLUFIX_DISTRIBUTE={by!r} — use samples (default: each cell's samples over the ranks) "
                          f"or cells (whole cells over the ranks)")
    world = World(rank=int(os.environ.get("RANK", "0")), size=size,
                  local_rank=int(os.environ.get("LOCAL_RANK", "0")), by=by)
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = str(device or "").startswith("cuda")
        if cuda:
            import torch

            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=BARRIER_TIMEOUT)
    return world


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
