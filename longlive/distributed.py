"""Process groups and the (dp, sp) device mesh from the launcher's environment (torchrun), and rank helpers.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them (or with
WORLD_SIZE=1) the run is a single process and nothing is initialised. The backend follows the
device: gloo on CPU, nccl on CUDA. No module state: `init_distributed` returns a `DistInfo`
that the caller owns and passes to `shutdown`.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import attrs
import torch
import torch.distributed as dist

from longlive.errors import ConfigError
from longlive.parallel import ParallelMesh

log = logging.getLogger(__name__)


@attrs.frozen
class DistInfo:
    """This process's place in the data-parallel group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} must be an integer (set by torchrun)") from None


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group the launcher describes; returns (info, this rank's device)."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world <= 1:
        return DistInfo(), device
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigError(f"WORLD_SIZE={world} but {key} is not set; launch with torchrun --nproc_per_node=N")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPUs; "
                              f"lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                device_id=device if device.type == "cuda" else None)
        log.info("process group: rank %d of %d (%s, %s)", rank, world, backend, device)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, owns_group=owns), device


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def build_mesh(sp: int, device: torch.device) -> tuple[ParallelMesh, torch.device]:
    """The (dp, sp) mesh of this launch (one process per device) and this rank's device.

    Without torchrun (WORLD_SIZE unset or 1) a single-process mesh; `sp` must then be 1. Under
    torchrun, joins (or reuses) the process group: gloo on CPU, NCCL on CUDA (device
    cuda:LOCAL_RANK), and builds torch's DeviceMesh with dimensions ("dp", "sp").
    """
    world = _env_int("WORLD_SIZE", 1)
    if world % sp:
        raise ConfigError(f"parallel.sp={sp} does not divide the {world} processes of this launch (WORLD_SIZE); "
                          f"launch a multiple of {sp} processes (torchrun --nproc_per_node={sp}) or change "
                          f"parallel.sp")
    if world <= 1:
        return ParallelMesh(), device
    info, device = init_distributed(device)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world // sp, sp), mesh_dim_names=("dp", "sp"))
    parallel = ParallelMesh(world=world, rank=info.rank, sp=sp, backend=dist.get_backend(), device_mesh=mesh,
                            owns_group=info.owns_group)
    log.info("device mesh: rank %d of %d, dp %d x sp %d (%s, %s)", info.rank, world, parallel.dp, sp,
             parallel.backend, device)
    return parallel, device


def close_mesh(mesh: ParallelMesh) -> None:
    """Destroy the process group if `build_mesh` created it (the end of a run)."""
    if mesh.owns_group and dist.is_initialized():
        dist.destroy_process_group()
