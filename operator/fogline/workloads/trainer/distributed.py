"""Where this process sits in a run: rank and world size from torchrun's environment, the
device it trains on and the collective backend (gloo on CPU, nccl on GPU). The choices are
pure functions; only `join_run` and `leave_run` touch torch.distributed."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fogline.workloads.trainer.errors import EXIT_BAD_INPUT, EXIT_RUNTIME_FAILURE, TrainerError

log = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Launch:
    """What torchrun tells each process through its environment."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class ProcessContext:
    launch: Launch
    device: str
    backend: str | None
    mixed_precision: bool

    @property
    def is_primary(self) -> bool:
        return self.launch.is_primary

    @property
    def is_distributed(self) -> bool:
        return self.launch.is_distributed


def launch_from_environment(env: Mapping[str, str]) -> Launch:
    try:
        return Launch(
            rank=int(env.get("RANK", "0")),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=int(env.get("WORLD_SIZE", "1")),
        )
    except ValueError as err:
        raise TrainerError(
            "InvalidArgument", f"RANK, LOCAL_RANK and WORLD_SIZE must be integers: {err}"
        ) from err


def select_device(requested: str, cuda_devices: int, local_rank: int) -> str:
    """`auto` takes the GPU matching the local rank when there is one, the CPU otherwise."""
    if requested == "cpu":
        return "cpu"
    if cuda_devices == 0:
        if requested == "cuda":
            raise TrainerError(
                "DeviceUnavailable",
                "--device cuda: no CUDA device is visible; use --device auto or cpu",
                EXIT_RUNTIME_FAILURE,
            )
        return "cpu"
    return f"cuda:{local_rank % cuda_devices}"


BACKEND_ENV = "FOGLINE_DIST_BACKEND"


def select_backend(device: str, requested: str | None = None) -> str:
    """The collective backend: the one requested (the operator passes
    spec.distributed.backend as FOGLINE_DIST_BACKEND), else nccl on CUDA and gloo on CPU."""
    if not requested:
        return "nccl" if device.startswith("cuda") else "gloo"
    if requested not in ("gloo", "nccl"):
        raise TrainerError(
            "InvalidArgument",
            f"{BACKEND_ENV}={requested!r}: use gloo (CPU or GPU) or nccl (GPU)",
            EXIT_BAD_INPUT,
        )
    if requested == "nccl" and not device.startswith("cuda"):
        raise TrainerError(
            "NoGpuForNccl",
            "backend nccl needs a CUDA device and none is visible; use backend gloo or give "
            "the pod GPUs",
            EXIT_RUNTIME_FAILURE,
        )
    return requested


def join_run(requested_device: str, mixed_precision: bool) -> ProcessContext:
    """Picks the device and, under torchrun, joins the process group."""
    import torch
    import torch.distributed as dist

    launch = launch_from_environment(os.environ)
    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = select_device(requested_device, cuda_devices, launch.local_rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    backend: str | None = None
    if launch.is_distributed:
        backend = select_backend(device, os.environ.get(BACKEND_ENV))
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        log.debug("rank %d of %d joined with %s", launch.rank, launch.world_size, backend)
    use_amp = mixed_precision and device.startswith("cuda")
    return ProcessContext(launch, device, backend, use_amp)


def leave_run(context: ProcessContext) -> None:
    import torch.distributed as dist

    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def share_from_primary(context: ProcessContext, value: Any) -> Any:
    """Rank 0's value on every rank (a no-op when alone)."""
    if not context.is_distributed:
        return value
    import torch.distributed as dist

    box = [value if context.is_primary else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
