"""Several training processes: `torchrun --nproc_per_node=N -m cnnlab train ...`.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and MASTER_ADDR/MASTER_PORT) in each process's
environment; `init_from_env` joins the process group (nccl on GPUs, gloo on the CPU). The model
is wrapped in DistributedDataParallel, which averages gradients across processes, so with a
global batch B each of N processes computes B/N images of every step (see loop.py).

BatchNorm is plain per-process BatchNorm, the usual multi-GPU setting of the paper's time (its
CIFAR models are "trained with a mini-batch size of 128 on two GPUs", He et al. 2015, section
4.2): batch statistics come from each process's B/N images, and the running statistics of
process 0 are broadcast (by DDP before each forward, by `broadcast_buffers` before each
evaluation and checkpoint) and saved. A model with BatchNorm therefore trains slightly
differently on N processes than on one; without BatchNorm the two agree up to float rounding
(tests/test_ddp.py).

Every process holds the whole training set and augments the whole global batch (cheap next to
the model), then takes its share, so the images of a step do not depend on N.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "all_reduce_sum", "broadcast_buffers", "init_from_env", "resolve_device"]


@dataclass(frozen=True)
class DistEnv:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        """Process 0 alone writes logs, metrics and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shutdown(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def init_from_env(device: torch.device) -> DistEnv:
    """Join the process group described by torchrun's environment variables, if any.

    With WORLD_SIZE unset or 1 this is a single process and nothing is initialised.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    created = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        created = True
    return DistEnv(
        rank=rank, world_size=world_size, local_rank=local_rank, initialized_here=created
    )


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum `values` over all processes (a no-op for one process)."""
    if env.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_buffers(module: torch.nn.Module, env: DistEnv) -> None:
    """Give every process process 0's buffers (BatchNorm running statistics).

    DDP does this at the start of each forward; after the last step of an interval the
    processes' running statistics differ again, so evaluations and checkpoints sync first.
    """
    if env.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def resolve_device(name: str | None, env_local_rank: int | None = None) -> torch.device:
    """`name` as a torch.device; None picks the GPU when there is one, else the CPU.

    Under torchrun a bare "cuda" means this process's GPU, cuda:LOCAL_RANK.
    """
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but this machine has no CUDA GPU")
        if device.index is None:
            local_rank = env_local_rank
            if local_rank is None:
                local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            device = torch.device("cuda", local_rank)
    return device
