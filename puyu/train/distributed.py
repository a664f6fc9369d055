"""Several processes: ``torchrun --nproc-per-node N -m puyu train ...`` with DDP or FSDP.

:func:`init_distributed` reads torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
and starts the process group (NCCL on GPUs, gloo on CPUs); without them it is
a single process.  :func:`wrap` wraps the objective in DDP (replicated weights,
gradients averaged) or FSDP2 ``fully_shard`` (every decoder layer and the root
sharded, for models that do not fit one device).  Each rank computes its share
of a global batch (see :meth:`puyu.data.TrainData.micro_batches`); the loss is
normalized by the trained tokens of the whole global batch, so N processes end
with the same weights as one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from puyu.hardware import resolve_device

log = logging.getLogger(__name__)


@dataclass
class DistEnv:
    """Where this process stands: ``rank`` of ``world`` processes, on ``device``."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> DistEnv:
    """Start the process group when launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world == 1:
        return DistEnv(0, 1, dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    log.info("rank %d of %d on %s", rank, world, dev)
    return DistEnv(rank, world, dev)


def wrap(objective: nn.Module, strategy: str, env: DistEnv) -> nn.Module:
    """The objective wrapped for ``strategy`` (``ddp`` or ``fsdp``); unchanged for one process."""
    if not env.active:
        return objective
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in objective.model.model.layers:
            fully_shard(layer)
        return fully_shard(objective)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(objective, device_ids=[env.device.index] if env.device.type == "cuda" else None)


def no_sync(module: nn.Module, skip: bool):
    """DDP's ``no_sync`` (FSDP: gradient sync off) for micro-batches before the last of a step."""
    if skip and hasattr(module, "no_sync"):
        return module.no_sync()
    if skip and hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(False)
        return contextlib.nullcontext()
    if hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(True)
    return contextlib.nullcontext()


def all_reduce_sum(value: float | torch.Tensor, env: DistEnv) -> float:
    """Sum of a number over all ranks."""
    if not env.active:
        return float(value)
    tensor = torch.as_tensor(value, dtype=torch.float64, device=env.device if env.device.type == "cuda" else "cpu").clone()
    dist.all_reduce(tensor)
    return float(tensor)


def barrier(env: DistEnv) -> None:
    if env.active:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.active and dist.is_initialized():
        dist.destroy_process_group()
