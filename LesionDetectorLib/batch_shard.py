"""``torchrun`` sharding of a batch: each process detects its share of the scans of one output folder.

``torchrun --nproc_per_node=8 [--nnodes=N ...] -m LesionDetectorLib.cli.main detect INPUT... --out OUT``
starts one process per GPU (or per group of CPU cores). Every process expands and plans the same
input list; scan ``i`` of the to-do list goes to rank ``i % world_size``, each rank on its own GPU
(``cuda:LOCAL_RANK``). The ranks meet three times through ``torch.distributed`` barriers (Gloo, so
CPU-only runs shard too): after rank 0 has cleaned up an interrupted run's partial folders, after
every rank has planned (so folder names are decided before any rank writes one), and at the end,
when rank 0 writes the one merged ``luna16_submission.csv``. A scan's results are its own
all-or-nothing folder, so a killed run restarted with the same command redoes only unfinished
scans (the batch's usual resume), whatever the number of processes.

This module only speaks to torch.distributed; the scheduling rules live in
:class:`LesionDetectorLib.batch.ScanBatchRunner`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Shard:
    """This process's place in a sharded batch; ``barrier()`` waits for every rank."""

    rank: int
    world_size: int
    local_rank: int = 0
    local_world_size: int = 1
    barrier: Callable[[], None] = lambda: None

    def __post_init__(self) -> None:
        if not (isinstance(self.world_size, int) and self.world_size >= 1 and 0 <= self.rank < self.world_size):
            raise ValueError(f"shard rank {self.rank!r} of world size {self.world_size!r} is not valid")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """The device of this rank: ``cuda:LOCAL_RANK`` when CUDA is requested (or auto-chosen)."""
        if requested in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank}"
            if requested == "cuda":
                raise ValueError("--device cuda was requested but CUDA is not available")
            return "cpu"
        return requested

    def cpu_threads(self) -> int:
        """This rank's share of the machine's cores, so co-located CPU ranks do not oversubscribe."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // max(1, self.local_world_size))


def shard_from_env(environ=None) -> Optional[Shard]:
    """The torchrun shard of this process (joining the Gloo process group), or None outside torchrun."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return Shard(rank=int(env["RANK"]), world_size=world, local_rank=int(env.get("LOCAL_RANK", "0")),
                 local_world_size=int(env.get("LOCAL_WORLD_SIZE", "1")), barrier=dist.barrier)


def close_shard(shard: Optional[Shard]) -> None:
    if shard is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
