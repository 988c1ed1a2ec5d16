"""The core's training algorithm: one network trained with the flow-matching objective.

Teacher forcing (AR: `[clean ; noisy]` under the block mask) or bidirectional diffusion, as
train.mode says; the loss is the `longlive_make_objective` role's (longlive/train/objective.py).
One optimizer step = `grad_accum` micro-steps, each taking one global batch from the data stream
(this rank's `batch_size` samples) and back-propagating loss / grad_accum (DDP syncs gradients
on the last micro-step only); then clip, warmed-up LR, AdamW step, refresh of quantized copies,
`longlive_optimizer_step_done`, EMA update.

Data parallelism under torchrun (`train.data_parallel`): "ddp" wraps the network in DDP (through
`_EntryPoints`, so its gradient hooks see `forward_teacher` calls); "fsdp2" shards it
(longlive/train/sharding.py) and calls it directly: its entry points are FSDP forward methods, and
the gradients are reduce-scattered after every micro-step (accumulated in the sharded gradients, so
no whole gradient is ever held). Both average the gradients over all dp x sp ranks.

I2V (train.i2v_probability > 0): the batches carry "clean_frames" (longlive/train/data.py) and the
objective gives frame 0 of the I2V samples clean, without loss. Error recycling
([train.error_recycling] enabled): the algorithm owns the ErrorBuffers
(longlive/train/error_recycling.py), hands them to the objective on every micro-step, commits the
recorded errors after the optimizer step and keeps them in its checkpoint state ("error_recycling").
Neither runs under sequence parallelism (parallel.sp > 1).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn

from longlive.errors import ConfigError
from longlive.quant.format import forward_context, refresh_model
from longlive.train.algorithm import TrainingContext, trained_network
from longlive.train.config import resolve_path

log = logging.getLogger(__name__)


class _EntryPoints(nn.Module):
    """Routes the DiT's entry points through one forward, so DDP's gradient hooks see each call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, entry: str, *args: Any, **kwargs: Any) -> torch.Tensor:
        return getattr(self.model, entry)(*args, **kwargs)


class Replicated:
    """What the objective calls under DDP: `model(...)` and `model.forward_teacher(...)`."""

    def __init__(self, ddp: nn.Module, module: nn.Module) -> None:
        self.ddp, self.module = ddp, module

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.ddp("forward", *args, **kwargs)

    def forward_teacher(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.ddp("forward_teacher", *args, **kwargs)


class TeacherForcing:
    """The flow-matching algorithm on one network "generator" (module docstring)."""

    loss_key = "loss"
    logged = ("loss", "mse", "sigma", "grad_norm")
    eval_network = "generator"

    def __init__(self, context: TrainingContext) -> None:
        self.context = context
        run, cfg = context.run, context.config
        self.name = cfg.mode
        if run.mesh.sp > 1 and (cfg.i2v_probability > 0 or cfg.error_recycling.enabled):
            raise ConfigError(f"train.i2v_probability / train.error_recycling under parallel.sp = {run.mesh.sp}: "
                              "sequence-parallel training is T2V without recycling; set parallel.sp = 1")
        if cfg.error_recycling.enabled and cfg.mode != "teacher_forcing":
            raise ConfigError(f"train.error_recycling: needs train.mode = \"teacher_forcing\", not {cfg.mode!r}")
        init = str(resolve_path(cfg.init_from, run, "train.init_from")) if cfg.init_from is not None else None
        self.network = trained_network(context, "generator", "generator", lr=cfg.lr, checkpoint=init,
                                       where="train.init_from", ema=True)
        self.networks = {"generator": self.network}
        self.objective = run.hook.longlive_make_objective(run=run)
        self.ddp = None
        self.entry: Any = self.network.model
        if context.info.distributed and not self.network.sharded:
            from torch.nn.parallel import DistributedDataParallel

            ids = [run.device] if run.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(_EntryPoints(self.network.model), device_ids=ids)
            self.entry = Replicated(self.ddp, self.network.model)
        self.autocast = run.device.type == "cuda" and run.dtype == torch.bfloat16
        self.generator = torch.Generator(device=run.device)
        self.recycling = None
        if cfg.error_recycling.enabled:
            from longlive.train.error_recycling import ErrorBuffers

            self.recycling = ErrorBuffers(cfg.error_recycling, world_size=run.mesh.dp)

    def train_step(self, step: int) -> tuple[dict[str, torch.Tensor], int]:
        cfg, net, run = self.context.config, self.network, self.context.run
        net.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        tokens = 0
        for micro in range(cfg.grad_accum):
            batch = self.context.next_batch()
            tokens += self._tokens(batch["latents"])
            defer_sync = self.ddp is not None and micro < cfg.grad_accum - 1
            with self.ddp.no_sync() if defer_sync else contextlib.nullcontext():
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast), forward_context(net.model):
                    extra = {"recycling": self.recycling} if self.recycling is not None else {}
                    loss, metrics = self.objective(self.entry, batch, self.generator, **extra)
                # under SP the loss is this rank's share; DDP averages over dp x sp ranks, so x sp sums the shares
                (loss * run.mesh.sp / cfg.grad_accum).backward()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value.detach().float() / cfg.grad_accum
        totals["grad_norm"] = net.clip_and_step(step, cfg.grad_clip)
        if self.recycling is not None:
            self.recycling.commit()
        refresh_model(net.model)  # quantized copies of the master weights are stale now
        run.hook.longlive_optimizer_step_done(model=net.model, step=step + 1, run=run)
        if net.ema is not None:
            net.ema.update(net.model, step + 1)
        return totals, tokens

    def _tokens(self, latents: torch.Tensor) -> int:
        pt, ph, pw = self.network.model.config.patch
        f, h, w = latents.shape[2:]
        halves = 2 if self.context.config.mode == "teacher_forcing" else 1
        return halves * (f // pt) * (h // ph) * (w // pw) * latents.shape[0] * self.context.run.mesh.dp

    def learning_rates(self, step: int) -> dict[str, float]:
        return {"lr": self.network.lr_at(step)}

    def state_dict(self) -> dict:
        state = self.network.state_dict()  # "model", "optimizer", "ema" at the checkpoint's top level
        if self.recycling is not None:
            state["error_recycling"] = self.recycling.state_dict()
        return state

    def load_state_dict(self, state: dict, *, where: str) -> None:
        self.network.load_state_dict(state, where=where)
        if self.recycling is not None:
            if "error_recycling" not in state:
                log.warning("%s holds no error-recycling buffers (saved without them): they start empty", where)
            else:
                self.recycling.load_state_dict(state["error_recycling"], where=where)

    def export(self, path: Any, step: int) -> None:
        self.network.export(path, run=self.context.run, step=step)
