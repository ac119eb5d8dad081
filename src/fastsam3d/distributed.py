"""Running under ``torchrun``: this process's rank, its device and the process group.

torchrun starts one process per device and tells each its place through the environment:
``RANK`` (global), ``LOCAL_RANK`` (on this node) and ``WORLD_SIZE``. Under torchrun a plain
``"cuda"`` device means ``cuda:LOCAL_RANK``, which is also made the current CUDA device (so
tensors created on ``"cuda"`` anywhere land on this process's GPU). Training joins the process
group with NCCL on CUDA devices and gloo on the CPU; evaluation, which exchanges only small
results, always uses gloo. Outside torchrun everything here is a no-op for rank 0 of 1.
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

from .errors import InputError

Backend = Literal["auto", "nccl", "gloo"]

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""Device names the command line offers (:func:`resolve_device` takes ``cuda:N`` too)."""


@dataclass(frozen=True)
class Launch:
    """This process's place: global ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0


def launch() -> Launch:
    """Read torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (rank 0 of 1 without them)."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    try:
        rank, world, local = (int(os.environ.get(n, d)) for n, d in zip(names, "010", strict=True))
    except ValueError:
        shown = {n: os.environ.get(n) for n in names}
        raise InputError(f"torchrun environment is not made of integers: {shown}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise InputError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return Launch(rank, world, local)


def under_torchrun() -> bool:
    """Whether torchrun (or another launcher setting ``LOCAL_RANK``) started this process."""
    return "LOCAL_RANK" in os.environ


def process_device(device: str | torch.device) -> torch.device:
    """``device`` as this process should use it: under torchrun an index-less ``cuda`` becomes
    ``cuda:LOCAL_RANK`` and is made the current device; anything else is returned as given."""
    d = torch.device(device)
    if d.type != "cuda" or d.index is not None or not under_torchrun():
        return d
    if not torch.cuda.is_available():
        raise InputError("device 'cuda': no CUDA device available")
    local, count = launch().local_rank, torch.cuda.device_count()
    if local >= count:
        raise InputError(
            f"LOCAL_RANK {local} but this process sees only {count} CUDA device(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): start at most "
            "as many processes per node as there are GPUs"
        )
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def resolve_device(name: str) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` -> this process's device.

    ``auto`` is CUDA when available. Under torchrun with several processes ``cuda`` means
    ``cuda:LOCAL_RANK``; an explicit ``cuda:N`` is refused there (every process would share it).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        d = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: no CUDA device available")
        world = launch().world
        if d.index is not None and world > 1:
            raise InputError(
                f"device {name!r} with {world} torchrun processes would put them all on one GPU; "
                "use 'cuda' (each process takes cuda:LOCAL_RANK)"
            )
    return process_device(d)


def backend_for(device: torch.device, requested: str = "auto") -> str:
    """The process-group backend for ``device``: NCCL on CUDA, gloo on the CPU (``auto``)."""
    if requested not in ("auto", "nccl", "gloo"):
        raise InputError(f"backend must be auto, nccl or gloo, got {requested!r}")
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl":
        if device.type != "cuda":
            raise InputError(
                f"backend 'nccl' needs CUDA devices but this process runs on {device}; "
                "use backend 'gloo' (or 'auto') on the CPU, or device 'cuda'"
            )
        if not dist.is_nccl_available():
            raise InputError("backend 'nccl': this torch build has no NCCL support")
    return requested


def join(device: torch.device, backend: str = "auto") -> tuple[int, int, bool]:
    """Join torchrun's process group (once per process) with :func:`backend_for`'s backend.

    Returns ``(rank, world, active)``; ``active`` is False outside torchrun. Under torchrun even
    a single process joins (so a 1-GPU run exercises NCCL and DDP as a larger one does). Ranks
    other than 0 log only warnings and errors from here on.
    """
    info = launch()
    chosen = backend_for(device, backend)  # validated even for one process
    if info.world == 1 and not (under_torchrun() and "MASTER_ADDR" in os.environ):
        return info.rank, 1, False
    if not dist.is_initialized():
        if chosen == "nccl" and device.index is None:
            raise InputError("backend 'nccl' needs an indexed CUDA device (see process_device)")
        dist.init_process_group(chosen)
        atexit.register(_leave)
    elif dist.get_world_size() != info.world:
        raise InputError(
            f"a process group of {dist.get_world_size()} exists, torchrun says {info.world}"
        )
    quiet_other_ranks(info.rank)
    return info.rank, info.world, True


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _WarningsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def quiet_other_ranks(rank: int) -> None:
    """On ranks other than 0, drop ``fastsam3d`` log records below WARNING (rank 0 logs)."""
    logger = logging.getLogger("fastsam3d")
    if rank != 0 and not any(isinstance(f, _WarningsOnly) for f in logger.filters):
        logger.addFilter(_WarningsOnly())


def active() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_to_rank0(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0 (``None`` elsewhere); ``[obj]`` alone."""
    if not active():
        return [obj]
    rank, world = dist.get_rank(), dist.get_world_size()
    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without a process group)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if active():
        dist.barrier()
