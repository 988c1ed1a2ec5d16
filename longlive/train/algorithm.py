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

    @classmethod
    def create(cls, name: str, model: nn.Module, *, lr: float, betas: tuple[float, ...], weight_decay: float,
               warmup_steps: int = 0, ema: tuple[float, int] | None = None) -> Network:
        """A network over `model`'s trainable parameters (all of them when it has no adapters);
        `ema`: (decay, start) for an EMA of those parameters, None for none."""
        from longlive.train.ema import EMA

        adapters = has_adapters(model)
        if not any(p.requires_grad for p in model.parameters()):  # no adapters: train everything
            model.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        shadow = EMA(model, decay=ema[0], start=ema[1]) if ema is not None else None
        return cls(name=name, model=model, optimizer=optimizer, lr=lr, warmup_steps=warmup_steps, ema=shadow,
                   params=params, adapters=adapters)

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
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        self.optimizer.step()
        return norm

    def weights(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds of the module: the adapters only for LoRA, else every tensor."""
        return adapter_state_dict(self.model) if self.adapters else self.model.state_dict()

    def state_dict(self) -> dict:
        state = {"model": self.weights(), "optimizer": self.optimizer.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict, *, where: str) -> None:
        from longlive.model.checkpoint import load_strict

        if self.adapters:
            load_adapters(self.model, state["model"], where=f"adapters of {self.name} in {where}")
        else:
            load_strict(self.model, state["model"], what=f"{self.name} of {where}")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def finite_state(self) -> dict:
        """The tensors the divergence check reads (weights, optimizer moments, EMA)."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()["state"]}
        if self.ema is not None:
            state["ema"] = self.ema.shadow
        return state

    def export(self, path: Any, *, run: RunContext, step: int, metadata: dict[str, str] | None = None) -> None:
        """Adapter-only (LoRA) or whole safetensors of the EMA weights when kept, else the live ones."""
        from longlive.model.checkpoint import save_safetensors_atomic

        weights = "ema" if self.ema is not None else "live"
        meta = {"step": str(step), "weights": weights, **(metadata or {})}
        if self.adapters:
            live = adapter_state_dict(self.model)
            state = live if self.ema is None else {k: v for k, v in self.ema.model_state(self.model).items()
                                                   if k in live}
            save_adapters(self.model, path, state=state, metadata=meta)
            return
        state = (self.ema.model_state(self.model, run.dtype) if self.ema is not None
                 else {k: v.to(run.dtype) if v.is_floating_point() and v.element_size() > 1 else v
                       for k, v in self.model.state_dict().items()})
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
        """Everything of the algorithm a resume needs (merged into the checkpoint's top level)."""

    def load_state_dict(self, state: dict, *, where: str) -> None:
        """Restore what `state_dict` returned (`where` names the checkpoint in errors)."""

    def export(self, path: Any, step: int) -> None:
        """Write the trained result to `path` (rank 0 only; the trainer checks finiteness first)."""


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
    """`trained_model` as a Network with [train]'s AdamW, warmup and (when `ema`) EMA."""
    cfg = context.config
    model = trained_model(context, role, checkpoint=checkpoint, where=where)
    return Network.create(name, model, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                          warmup_steps=cfg.warmup_steps, ema=(cfg.ema_decay, cfg.ema_start) if ema else None)
