"""The training-algorithm role: what a training algorithm owns and what the trainer asks of it.

A training algorithm (the `longlive_make_training_algorithm` role) owns its networks, their
optimizers, the per-step losses and the update schedule; the trainer (longlive/train/trainer.py)
owns the data, the loop, logging, checkpoints, resume and the export, and runs the algorithm:

    algorithm = hook.longlive_make_training_algorithm(context=TrainingContext(...))
    for step in ...:  metrics, tokens = algorithm.train_step(step)     # 0-based step
    checkpoint = {..., **algorithm.state_dict()};  algorithm.load_state_dict(checkpoint)
    algorithm.export(path, step)

A `Network` is one trained network: the module, its trainable parameters, its AdamW optimizer,
its learning rate (with the run's linear warmup) and an optional EMA. Its state is what a
checkpoint holds of it: the adapters only when it trains LoRA adapters (the frozen base comes
back from its source), else the whole state dict; the optimizer state; the EMA shadow.

A sharded Network (`train.data_parallel = "fsdp2"` under torchrun, longlive/train/sharding.py)
holds DTensors: its parameters, gradients, AdamW moments and EMA shadow are this rank's shards
(the EMA of the shards is the shard of the EMA: the update is elementwise). Its `state_dict` and
`export` gather them to whole tensors on rank 0 (collectives: every rank calls them), in the
replicated layout, so checkpoints and exports are the same files under DDP and FSDP2; its
`load_state_dict` takes such whole tensors and keeps this rank's shards.

The core's algorithm is teacher forcing (longlive/train/teacher_forcing.py, one network); the
dmd plugin trains three (generator, frozen teacher, critic).
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import torch
from torch import nn

from longlive.assembly import build_model
from longlive.lora import adapter_state_dict, has_adapters, load_adapters, save_adapters
from longlive.quant.format import cast_model

if TYPE_CHECKING:
    from longlive.distributed import DistInfo
    from longlive.protocols import Codec, TextEncoder
    from longlive.run import RunContext
    from longlive.train.config import TrainConfig
    from longlive.train.data import BatchEncoder, DataStream, SkippingDataset
    from longlive.train.ema import EMA

log = logging.getLogger(__name__)


@attrs.define(kw_only=True)
class TrainingContext:
    """What the trainer hands an algorithm: the run, [train], the ranks and the data pipeline."""

    run: RunContext
    config: TrainConfig
    info: DistInfo
    dataset: SkippingDataset
    stream: DataStream
    encoder: BatchEncoder
    codec: Codec
    text: TextEncoder

    def next_batch(self) -> dict:
        """This rank's next batch (DataStream order): "latents", "context", "seeds"."""
        return self.encoder(self.dataset, *self.stream.next())

    def next_prompts(self, *, first_frame: bool = False) -> dict:
        """This rank's next batch as text only (BatchEncoder.encode_prompts): "context", "seeds"
        and, with `first_frame`, the first latent frame "image" (I2V)."""
        return self.encoder.encode_prompts(self.dataset, *self.stream.next(), first_frame=first_frame)


@attrs.define(kw_only=True, eq=False)
class Network:
    """One trained network of an algorithm (module docstring)."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr: float
    warmup_steps: int = 0
    ema: EMA | None = None
    params: list[torch.Tensor] = attrs.field(factory=list)
    adapters: bool = False
    sharded: bool = False  # FSDP2: parameters, optimizer state and EMA are DTensors (module docstring)

    @classmethod
    def create(cls, name: str, model: nn.Module, *, lr: float, betas: tuple[float, ...], weight_decay: float,
               warmup_steps: int = 0, ema: tuple[float, int] | None = None, sharded: bool = False) -> Network:
        """A network over `model`'s trainable parameters (all of them when it has no adapters);
        `ema`: (decay, start) for an EMA of those parameters, None for none; `sharded`: `model` is
        already fully_shard-ed (the optimizer and the EMA then hold shards)."""
        from longlive.train.ema import EMA

        adapters = has_adapters(model)
        if not any(p.requires_grad for p in model.parameters()):  # no adapters: train everything
            model.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        shadow = EMA(model, decay=ema[0], start=ema[1]) if ema is not None else None
        return cls(name=name, model=model, optimizer=optimizer, lr=lr, warmup_steps=warmup_steps, ema=shadow,
                   params=params, adapters=adapters, sharded=sharded)

    def broadcast_from_rank0(self) -> None:
        """Give every rank rank 0's trainable parameters (fresh adapters are drawn from per-rank RNGs);
        an algorithm without DDP calls it once after building, under torch.distributed."""
        from longlive.train.ema import EMA

        with torch.no_grad():
            for p in self.params:
                torch.distributed.broadcast(p.data, src=0)
        if self.ema is not None:  # the shadow starts from the broadcast weights
            self.ema = EMA(self.model, decay=self.ema.decay, start=self.ema.start)

    def lr_at(self, step: int) -> float:
        """Linear warmup over warmup_steps, then constant; `step` is 0-based."""
        warmup = self.warmup_steps
        return self.lr * (min(1.0, (step + 1) / warmup) if warmup else 1.0)

    def clip_and_step(self, step: int, grad_clip: float) -> torch.Tensor:
        """Clip the gradient norm (0: no clipping), set the warmed-up LR, AdamW step; returns the norm
        before clipping (detached fp32)."""
        max_norm = grad_clip if grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm).detach().float()
        if self.sharded:  # a replicated DTensor: the norm over every shard
            norm = norm.full_tensor()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        self.optimizer.step()
        return norm

    def weights(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds of the module: the adapters only for LoRA, else every tensor."""
        return adapter_state_dict(self.model) if self.adapters else self.model.state_dict()

    def state_dict(self) -> dict:
        """The checkpoint state; sharded: a collective, whole tensors on rank 0 (None on the others)."""
        state = {"model": self.weights(), "optimizer": self.optimizer.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return self._gathered(state)

    def _gathered(self, state: dict) -> dict:
        if not self.sharded:
            return state
        from longlive.train.sharding import gather_full

        return gather_full(state, keep=torch.distributed.get_rank() == 0)

    def _sharded_state(self, state: dict) -> dict:
        """A whole-tensor checkpoint state cut into this rank's shards (the model's, the optimizer
        moments' like their parameters, the EMA's like its parameters)."""
        from longlive.train.sharding import shard_like

        own = self.model.state_dict()
        named = dict(self.model.named_parameters())
        model = {k: shard_like(v, own[k]) if k in own and v.shape == own[k].shape else v
                 for k, v in state["model"].items()}
        moments = {}
        for index, values in state["optimizer"]["state"].items():
            p = self.params[index] if isinstance(index, int) and index < len(self.params) else None
            moments[index] = {k: shard_like(v, p) if p is not None and isinstance(v, torch.Tensor)
                              and v.shape == p.shape else v for k, v in values.items()}
        out = {**state, "model": model, "optimizer": {**state["optimizer"], "state": moments}}
        if "ema" in state:
            shadow = {k: shard_like(v, named[k]) if k in named and v.shape == named[k].shape else v
                      for k, v in state["ema"]["shadow"].items()}
            out["ema"] = {**state["ema"], "shadow": shadow}
        return out

    def load_state_dict(self, state: dict, *, where: str) -> None:
        from longlive.model.checkpoint import load_strict

        if self.sharded:
            state = self._sharded_state(state)
        if self.adapters:
            load_adapters(self.model, state["model"], where=f"adapters of {self.name} in {where}")
        else:
            load_strict(self.model, state["model"], what=f"{self.name} of {where}")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def finite_state(self) -> dict:
        """The tensors the divergence check reads (weights, optimizer moments, EMA); sharded: this rank's shards."""
        from longlive.train.sharding import local_tensors

        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()["state"]}
        if self.ema is not None:
            state["ema"] = self.ema.shadow
        return local_tensors(state) if self.sharded else state

    def export(self, path: Any, *, run: RunContext, step: int, metadata: dict[str, str] | None = None) -> None:
        """Adapter-only (LoRA) or whole safetensors of the EMA weights when kept, else the live ones.
        Called on every rank; rank 0 writes (a sharded network gathers the weights first)."""
        from longlive.model.checkpoint import save_safetensors_atomic

        if not (self.sharded or run.mesh.is_writer):
            return
        weights = "ema" if self.ema is not None else "live"
        meta = {"step": str(step), "weights": weights, **(metadata or {})}
        if self.adapters:
            live = adapter_state_dict(self.model)
            state = live if self.ema is None else {k: v for k, v in self.ema.model_state(self.model).items()
                                                   if k in live}
        else:
            state = (self.ema.model_state(self.model, run.dtype) if self.ema is not None
                     else {k: v.to(run.dtype) if v.is_floating_point() and v.element_size() > 1 else v
                           for k, v in self.model.state_dict().items()})
        state = self._gathered(state)
        if not run.mesh.is_writer:
            return
        if self.adapters:
            save_adapters(self.model, path, state=state, metadata=meta)
            return
        save_safetensors_atomic(state, path, metadata={"preset": run.experiment.model.preset,
                                                       "prediction": self.model.config.prediction, **meta})


@runtime_checkable
class TrainingAlgorithm(Protocol):
    """The `longlive_make_training_algorithm` role (module docstring).

    `name`: recorded in checkpoints ("mode") and the summary. `networks`: the trained networks by
    name (frozen ones may be listed in `frozen`). `loss_key`: the metric whose value is the run's
    loss (history, divergence check). `logged`: metric names in a fixed order (every rank logs
    the same names). `eval_network`: the network whose weights the evaluation video shows.
    """

    name: str
    networks: dict[str, Network]
    loss_key: str
    logged: tuple[str, ...]
    eval_network: str

    def train_step(self, step: int) -> tuple[dict[str, torch.Tensor], int]:
        """One optimizer step (0-based `step`): (detached 0-d metrics, DiT tokens processed on all ranks)."""

    def learning_rates(self, step: int) -> dict[str, float]:
        """The LR in force at 0-based `step`, by logged name (e.g. "lr")."""

    def state_dict(self) -> dict:
        """Everything of the algorithm a resume needs (merged into the checkpoint's top level); called
        on every rank (a collective for sharded networks), rank 0's result is written."""

    def load_state_dict(self, state: dict, *, where: str) -> None:
        """Restore what `state_dict` returned (`where` names the checkpoint in errors)."""

    def export(self, path: Any, step: int) -> None:
        """Write the trained result to `path`: called on every rank (a sharded network gathers its
        weights, a collective), rank 0 writes; the trainer checks finiteness first."""


def trained_model(context: TrainingContext, role: str, *, checkpoint: str | None, where: str) -> nn.Module:
    """Build `role` for training: FP32 master weights, the frozen base quantized and BF16/FP32
    adapters attached when train.lora_rank > 0 (longlive/assembly.py), in train mode, with
    activation checkpointing of its blocks when train.checkpoint_blocks."""
    model = cast_model(build_model(context.run, role=role, training=True, checkpoint=checkpoint, where=where,
                                   dtype=torch.float32), torch.float32).train()
    model.checkpoint_blocks = context.config.checkpoint_blocks
    return model


def trained_network(context: TrainingContext, name: str, role: str, *, lr: float, checkpoint: str | None,
                    where: str, ema: bool) -> Network:
    """`trained_model` as a Network with [train]'s AdamW, warmup and (when `ema`) EMA; sharded by
    FSDP2 (rank 0's weights, then fully_shard) when train.data_parallel = "fsdp2" under torchrun."""
    cfg, run = context.config, context.run
    sharded = cfg.data_parallel == "fsdp2" and context.info.distributed
    if sharded:
        from longlive.train.sharding import check_fsdp2

        check_fsdp2(cfg, run)
    elif cfg.data_parallel == "fsdp2":
        log.info("train.data_parallel = \"fsdp2\" with one process: nothing to shard, the model trains unwrapped")
    model = trained_model(context, role, checkpoint=checkpoint, where=where)
    if sharded:
        from longlive.train.sharding import broadcast_module, fsdp_param_dtype, shard_dit

        broadcast_module(model)
        param_dtype = fsdp_param_dtype(cfg, run)
        shard_dit(model, run.mesh, param_dtype=param_dtype, shard=cfg.fsdp_shard)
        log.info("%s: FSDP2 over %s (%d processes), parameters computed in %s, gradients reduced in fp32", name,
                 cfg.fsdp_shard, run.mesh.world, param_dtype or torch.float32)
    return Network.create(name, model, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                          warmup_steps=cfg.warmup_steps, ema=(cfg.ema_decay, cfg.ema_start) if ema else None,
                          sharded=sharded)
