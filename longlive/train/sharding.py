"""FSDP2 (`torch.distributed.fsdp.fully_shard`) of the trained DiT: `[train] data_parallel = "fsdp2"`.

`shard_dit` shards every WanBlock, then the root (embeddings, head): each rank of the shard group
stores 1/n of every parameter, gradient and AdamW moment (Shard(0) of each tensor); a block's
parameters are all-gathered just before its forward (and again in the backward) and freed after,
gradients are reduce-scattered (averaged). The shard group (`train.fsdp_shard`):

- "world": every process, dp x sp. The SP ranks of a group compute with the same (gathered)
  weights, so sharding over them is as valid as over dp, and it is the only sharding there is
  when dp = 1 (the 5B on 4 GPUs at sp = 4).
- "dp": HSDP, shard over the dp ranks of one SP position, replicate over the SP group (a 2-D
  ("sp", "dp") DeviceMesh built from the core's (dp, sp) mesh).

Either way the gradients end up averaged over all dp x sp ranks, as DDP does (the trainer's
loss x sp turns the SP ranks' loss shares into their sum). `forward_teacher` and `forward_chunk`
are registered with FSDP, so calling them unshards the root's parameters like `forward` does.

Mixed precision (`param_dtype`, bf16 on CUDA): parameters are all-gathered and computed in that
dtype, gradients reduced in fp32 (`reduce_dtype`); the sharded master weights stay fp32.

State crosses the shard boundary tensor by tensor, in the replicated (DDP) layout:
`gather_full` turns every DTensor of a nested state (model state dict, the optimizer's own
index-keyed `state_dict()`, EMA shadows) into the whole tensor on the CPU of rank 0, one tensor
at a time (what `get_model_state_dict(full_state_dict=True, cpu_offload=True)` does), so a
checkpoint or export written under FSDP2 has exactly the keys, shapes and dtypes of one written
under DDP; `shard_like` cuts a whole tensor read from such a file into this rank's shard of a
DTensor (no communication: every rank reads the file). Works on CPU with gloo (torch 2.13) and
on CUDA with NCCL.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from longlive.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from longlive.parallel import ParallelMesh
    from longlive.run import RunContext
    from longlive.train.config import TrainConfig

ENTRY_POINTS = ("forward_teacher", "forward_chunk")


def data_parallel_mesh(mesh: ParallelMesh, shard: str = "world"):
    """The DeviceMesh FSDP2 works on: 1-D over every rank ("world", or "dp" when sp = 1), else
    2-D ("sp", "dp") for HSDP (replicate over the SP group's ranks, shard over the dp ranks of
    one SP position)."""
    from torch.distributed.device_mesh import DeviceMesh

    device_mesh = mesh.device_mesh
    if mesh.sp == 1:
        return device_mesh["dp"]
    if shard == "world":
        return DeviceMesh(device_mesh.device_type, torch.arange(mesh.world), mesh_dim_names=("world",))
    ranks = device_mesh.mesh.transpose(0, 1).contiguous()  # [sp, dp]: row k = the dp group of SP position k
    return DeviceMesh(device_mesh.device_type, ranks, mesh_dim_names=("sp", "dp"))


def shard_dit(model: nn.Module, mesh: ParallelMesh, *, param_dtype: torch.dtype | None = None,
              shard: str = "world") -> None:
    """fully_shard the DiT in place (module docstring); its blocks are `model.blocks`."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    device_mesh = data_parallel_mesh(mesh, shard)
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for block in model.blocks:
        fully_shard(block, mesh=device_mesh, mp_policy=policy)
    fully_shard(model, mesh=device_mesh, mp_policy=policy)
    for name in ENTRY_POINTS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)


def check_fsdp2(config: TrainConfig, run: RunContext) -> None:
    """What FSDP2 in the trainer does not support yet, each a one-line ConfigError (before any build)."""
    if config.eval_every:
        raise ConfigError(f"train.eval_every = {config.eval_every} with train.data_parallel = \"fsdp2\" under "
                          f"{run.mesh.world} processes: evaluation runs on rank 0 alone with the whole model; set "
                          f"train.eval_every = 0 and evaluate the exported weights, or use data_parallel = \"ddp\"")
    if run.experiment.quant.generator != "none":
        raise ConfigError(f"quant.generator = {run.experiment.quant.generator!r} with train.data_parallel = "
                          f"\"fsdp2\": quantized bases are not sharded yet; use data_parallel = \"ddp\"")


def fsdp_param_dtype(config: TrainConfig, run: RunContext) -> torch.dtype | None:
    """train.fsdp_param_dtype as FSDP2's param_dtype (None: the parameters' own fp32)."""
    name = config.fsdp_param_dtype
    if name == "auto":
        name = "bf16" if run.device.type == "cuda" and run.dtype == torch.bfloat16 else "fp32"
    return torch.bfloat16 if name == "bf16" else None


def broadcast_module(model: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (DDP does this when it wraps; fully_shard
    keeps each rank's own slice, and per-rank seeds may have drawn different initial weights)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(t.data, src=0)


def is_sharded(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def gather_full(state: Any, *, keep: bool) -> Any:
    """`state` (nested dicts / lists / tuples) with every DTensor replaced by its whole tensor on the
    CPU when `keep` (rank 0), by None elsewhere; plain tensors and values pass through. A collective:
    every rank calls it with the same structure (the same order of DTensors)."""
    if is_sharded(state):
        full = state.full_tensor()
        return full.cpu() if keep else None
    if isinstance(state, dict):
        return {k: gather_full(v, keep=keep) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(gather_full(v, keep=keep) for v in state)
    return state


def local_tensors(state: Any) -> Any:
    """`state` with every DTensor replaced by this rank's shard (a plain tensor; no communication)."""
    if is_sharded(state):
        return state.to_local()
    if isinstance(state, dict):
        return {k: local_tensors(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(local_tensors(v) for v in state)
    return state


def shard_like(full: torch.Tensor, like: Any) -> Any:
    """This rank's shard of the whole tensor `full`, laid out like the DTensor `like` (`full` when
    `like` is a plain tensor); shapes must agree (checked by the callers' loaders)."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import DTensor, distribute_tensor

    cut = distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)
    # the cut is a view of `full`'s device copy: clone it, so the whole tensor is freed right away
    return DTensor.from_local(cut.to_local().clone(), like.device_mesh, like.placements, run_check=False,
                              shape=cut.shape, stride=cut.stride())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain (unsharded) state dict of a sharded model on every rank, on the model's device (a
    collective; torch's cpu_offload variant would fill it on rank 0 only)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
