"""FSDP2 (`torch.distributed.fsdp.fully_shard`) of the DiT over the data-parallel processes.

`shard_dit` shards every WanBlock, then the root (embeddings, head), over the mesh's dp
dimension: each dp rank stores 1/dp of every parameter, gradient and AdamW state; a block's
parameters are all-gathered just before its forward (and backward) and freed after, gradients
are reduce-scattered (averaged over dp). With sp > 1 the SP ranks of a group hold replicas:
HSDP, replicate over sp and shard over dp (the gradients are then averaged over dp x sp, as
DDP does; the trainer's x sp turns the SP ranks' loss shares into their sum).

The DiT's entry points other than `forward` (`forward_teacher`, `forward_chunk`) are registered
with FSDP, so calling them unshards the root's parameters like `forward` does.

Mixed precision (`param_dtype`, e.g. bf16 on CUDA): parameters are all-gathered and computed in
that dtype, gradients reduced in fp32 (`reduce_dtype`), the sharded master weights stay fp32.

Works on CPU with gloo (torch 2.13; tests/train/test_fsdp2.py) and on CUDA with NCCL. Not yet
wired into the trainer's checkpoints: a sharded model's state_dict holds DTensors
(`full_state_dict` below gathers a plain one).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import nn

    from longlive.parallel import ParallelMesh

ENTRY_POINTS = ("forward_teacher", "forward_chunk")


def data_parallel_mesh(mesh: ParallelMesh):
    """The DeviceMesh FSDP2 shards over: 1-D ("dp",) when sp = 1, else 2-D ("sp", "dp") for HSDP
    (replicate over the SP group's ranks, shard over the dp ranks of one SP position)."""
    from torch.distributed.device_mesh import DeviceMesh

    device_mesh = mesh.device_mesh
    if mesh.sp == 1:
        return device_mesh["dp"]
    ranks = device_mesh.mesh.transpose(0, 1).contiguous()  # [sp, dp]: row k = the dp group of SP position k
    return DeviceMesh(device_mesh.device_type, ranks, mesh_dim_names=("sp", "dp"))


def shard_dit(model: nn.Module, mesh: ParallelMesh, *, param_dtype: torch.dtype | None = None) -> None:
    """fully_shard the DiT in place (module docstring); its blocks are `model.blocks`."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    device_mesh = data_parallel_mesh(mesh)
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for block in model.blocks:
        fully_shard(block, mesh=device_mesh, mp_policy=policy)
    fully_shard(model, mesh=device_mesh, mp_policy=policy)
    for name in ENTRY_POINTS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain (unsharded) state dict of a sharded model on every rank, on the model's device (a
    collective; torch's cpu_offload variant would fill it on rank 0 only)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
