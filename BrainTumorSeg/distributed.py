"""Data-parallel training across processes: PyTorch DistributedDataParallel under ``torchrun``.

``torchrun --nproc_per_node N ... brain-tumor-seg train ...`` (or ``python -m torch.distributed.run``)
starts N copies of the command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
address in their environment. Each copy joins one process group (gloo on CPUs, NCCL on CUDA GPUs),
starts from rank 0's weights, samples its own share of the data (its own cases and seed), and
averages gradients with the others after every backward pass (Li et al., "PyTorch Distributed",
VLDB 2020, arXiv:2006.15704), so all ranks hold identical weights. Only rank 0 validates and writes.
Without those variables, training runs in one process and every function here is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# Ranks wait at a barrier while rank 0 validates; a dense Havaei validation can take many minutes.
BARRIER_TIMEOUT = datetime.timedelta(hours=4)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: ``rank`` of ``world_size`` (``1``: not distributed) and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel (its trainable parameters as they are now), or itself."""
        if not self.enabled:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def sync_buffers(self, module: nn.Module) -> None:
        """Give every rank rank 0's buffers (batch-norm running statistics: each rank's last forward updated its own)."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean_and_any(self, value: float, flag: bool) -> tuple[float, bool]:
        """The mean of ``value`` and whether any rank's ``flag`` is set, in one collective call."""
        if not self.enabled:
            return value, flag
        tensor = torch.tensor(
            [value, float(flag)], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu"
        )
        dist.all_reduce(tensor)
        return float(tensor[0]) / self.world_size, bool(tensor[1] > 0)

    def gather(self, items: list) -> list:
        """Every rank's ``items``, concatenated in rank order (small picklable values; ``items`` when not distributed)."""
        if not self.enabled:
            return list(items)
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, list(items))
        return [item for part in gathered for item in part]

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: torch.device) -> Distributed:
    """Join the process group when started by torchrun (gloo for CPU, NCCL for CUDA); else a single process."""
    if not launched_by_torchrun():
        return Distributed(device=device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"distributed training runs on CPUs (gloo) or CUDA GPUs (NCCL), not on {device.type}")
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=BARRIER_TIMEOUT)
    return Distributed(rank, world_size, device)
