"""Data-parallel training under torchrun: one process per device, one global batch split across them.

    torchrun --standalone --nproc_per_node=2 -m energy_cli train epochs=2          # one machine
    torchrun --nnodes=2 --node_rank=R --rdzv_endpoint=HOST:PORT --nproc_per_node=8 -m energy_cli train ...

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; with WORLD_SIZE > 1, `train` and `finetune` join a process
group (nccl on GPUs, gloo on CPUs) and wrap the model in DistributedDataParallel. `batch_size` and
`outlier_batch_size` stay GLOBAL: every rank draws the same batch indices and augmentation from the shared
seed and keeps its own contiguous slice of the batch, so the data a step sees is exactly the one-process
batch. Rank 0 alone writes checkpoint.pt, train_log.csv and the run folder's records; the checkpoint holds
the plain model's weights (no `module.` prefix) and loads in a single process. `eval` and the other commands
run on rank 0 only (the other ranks exit at once): evaluation is a single forward pass per image.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.distributed as dist

from energy_cli.config.overrides import last_value
from energy_cli.engine.ranks import Group, from_env  # noqa: F401 (re-exported)


def current() -> Group:
    """The group of the initialised process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Group()


def backend_for(overrides: Sequence[str]) -> str:
    """nccl when this run computes on CUDA GPUs, gloo otherwise (device=cpu, or no GPU)."""
    wants_cpu = last_value(overrides, "device") == "cpu"
    return "nccl" if torch.cuda.is_available() and not wants_cpu else "gloo"


def init(backend: str) -> Group:
    """Join the process group torchrun prepared; on GPUs each process takes the GPU of its local rank."""
    group = from_env()
    if group.enabled and not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(group.local_rank)
        dist.init_process_group(backend=backend)
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value: Any) -> Any:
    """Rank 0's `value`, on every rank (any picklable object)."""
    if not current().enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `t` over all ranks (in place, returned)."""
    if current().enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flags: torch.Tensor) -> torch.Tensor:
    """Element-wise: is the flag set on any rank (0/1 tensor, in place, returned)."""
    if current().enabled:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


def sync_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP broadcasts them at the start
    of each forward pass, so after the last step every rank holds statistics of its own slice; this makes
    evaluation and the saved checkpoint the same on all ranks."""
    if current().enabled:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def weights_checksum(model: torch.nn.Module) -> torch.Tensor:
    """Two numbers that change with any change of the weights: the sum, and a position-weighted sum, of every
    parameter and buffer value (float64)."""
    total = torch.zeros(2, dtype=torch.float64)
    for i, t in enumerate(model.state_dict().values()):
        if t.is_floating_point():
            v = t.detach().double().flatten().cpu()
            total[0] += v.sum()
            total[1] += (v * torch.arange(1, len(v) + 1, dtype=torch.float64)).sum() * (i + 1)
    return total


def check_identical_weights(model: torch.nn.Module) -> bool:
    """After training: gather every rank's checksum on every rank; True when all ranks hold the same weights."""
    group = current()
    if not group.enabled:
        return True
    mine = weights_checksum(model)
    device = next(model.parameters()).device if dist.get_backend() == "nccl" else torch.device("cpu")
    gathered = [torch.zeros_like(mine, device=device) for _ in range(group.world_size)]
    dist.all_gather(gathered, mine.to(device))
    return all(torch.equal(g.cpu(), gathered[0].cpu()) for g in gathered)
