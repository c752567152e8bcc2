"""Data-parallel training on PyTorch's own engine: ``torchrun`` + ``DistributedDataParallel``.

Nothing here launches processes or exchanges gradients by hand: ``torchrun`` starts one process per
device (and rendezvous across hosts), ``torch.distributed`` connects them, DDP all-reduces gradients.
This module only reads torchrun's environment, picks the backend for the device, shards the data
with ``DistributedSampler``, reduces metrics, and decides which rank writes files.

    torchrun --nproc-per-node 2 -m mobilenets train --data DIR ...          # one machine
    torchrun --nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
             --nproc-per-node 8 -m mobilenets train --data DIR ...          # several machines
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from mobilenets.core.errors import MobilenetsError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job. A single process is a world of one."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sync_batchnorm: bool = False

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and reports."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum numbers over ranks (e.g. correct predictions and sample counts)."""
        if not self.is_distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(tensor)
        return tensor.tolist()

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor of metric totals over ranks."""
        if not self.is_distributed:
            return values
        reduced = values.to(self.device if self.backend == "nccl" else "cpu").clone()
        dist.all_reduce(reduced)
        return reduced.cpu()

    def merge_evaluation(self, result):
        """Every rank evaluates the whole validation set, so results are already global."""
        return result

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The module that runs the training forward/backward: DDP when distributed."""
        return wrap_model(model, self, self.sync_batchnorm)

    def broadcast_object(self, obj):
        """Rank 0's value of ``obj`` on every rank (e.g. a decision taken once)."""
        if not self.is_distributed:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 for a process of one), known before joining the job."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def init_distributed(
    device: str = "auto", sync_batchnorm: bool = False, timeout_minutes: float = 30.0
) -> DistributedContext:
    """Join the torchrun job this process belongs to, or return a one-process context.

    Backend: NCCL when the processes drive CUDA devices, gloo on CPU (PyTorch's own recommendation).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise MobilenetsError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise MobilenetsError("--device cuda: no CUDA device is available to PyTorch on this machine; use --device cpu")
    wants_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if sync_batchnorm and not wants_cuda:
        raise MobilenetsError(
            "--sync-bn needs CUDA: PyTorch implements SyncBatchNorm for GPUs only. On CPU each process "
            "normalizes its own batch; use --freeze-bn to keep BatchNorm statistics fixed instead"
        )
    if not launched_by_torchrun():
        return DistributedContext(device=torch.device("cuda" if wants_cuda else "cpu"))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if wants_cuda:
        if torch.cuda.device_count() <= local_rank:
            raise MobilenetsError(
                f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                "use --nproc-per-node ≤ the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        backend, process_device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, process_device = "gloo", torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    context = DistributedContext(rank, local_rank, world_size, backend, process_device, sync_batchnorm)
    stop_cleanly_when_a_peer_fails(context)
    return context


PEER_FAILURE = (
    "the distributed job is stopping (another rank failed or the job was cancelled). The last checkpoint "
    "is intact; continue with the same command plus --resume RUN_DIR."
)


def explain_peer_failure(context: DistributedContext, error: BaseException) -> MobilenetsError | None:
    """A collective that fails because a peer died (gloo: connection reset; NCCL: aborted) → one clear line."""
    if not context.is_distributed:
        return None
    text = str(error)
    markers = ("Connection reset", "Connection closed", "Broken pipe", "peer", "NCCL", "DistBackendError", "timed out")
    if isinstance(error, dist.DistError) or any(marker in text for marker in markers):
        return MobilenetsError(f"rank {context.rank}: {PEER_FAILURE} ({text.splitlines()[0][:160]})")
    return None


def stop_cleanly_when_a_peer_fails(context: DistributedContext) -> None:
    """torchrun sends SIGTERM to every surviving worker once one fails: say what happened, then exit.

    The last checkpoint on disk was written atomically, so ``--resume`` continues from it with any
    number of processes.
    """

    def on_terminate(signum, _frame) -> None:
        # Every surviving rank says it: the rank that failed may have been rank 0.
        print(
            f"\nmobilenets train: rank {context.rank}: {PEER_FAILURE} (received {signal.Signals(signum).name})",
            file=sys.stderr,
            flush=True,
        )
        os._exit(143)

    signal.signal(signal.SIGTERM, on_terminate)


def sampler_indices(num_samples: int, rank: int, world_size: int, seed: int) -> torch.Tensor:
    """This rank's share of one seeded permutation, as ``DistributedSampler`` deals it.

    Rank r takes every world_size-th index; the tail that would make shards unequal is dropped, so
    every rank runs the same number of steps (DDP needs that). With one process this is simply the
    seeded permutation, and the ranks' k-th batches together are the k-th batch of that run.
    """
    sampler = DistributedSampler(
        range(num_samples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    return torch.tensor(list(sampler), dtype=torch.int64)


def wrap_model(model: nn.Module, context: DistributedContext, sync_batchnorm: bool = False) -> nn.Module:
    """DDP-wrap ``model`` for this context (a no-op for one process).

    SyncBatchNorm computes BN statistics over the global batch: slower, but identical to a single
    process with the same global batch, and better when the per-process batch is small.
    """
    if not context.is_distributed:
        return model
    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [context.local_rank] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shutdown(context: DistributedContext) -> None:
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()
