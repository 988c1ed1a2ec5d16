"""The `train` task: bidirectional diffusion or AR teacher-forcing training of the DiT.

One optimizer step = `grad_accum` micro-steps, each taking one global batch from the
DataStream (this rank's `batch_size` samples), encoding it (codec + text encoder, frozen),
and back-propagating the objective's loss / grad_accum (DDP syncs gradients on the last
micro-step only). Then: clip the gradient norm, set the warmed-up LR, AdamW step, EMA update.
Logged every log_every steps (averaged over ranks): train/loss, train/mse, train/sigma,
train/grad_norm (before clipping), train/lr, train/tokens_per_s (DiT sequence tokens, clean and
noisy halves in teacher forcing, of all ranks, per second of wall time).

Checkpoints (`<run_dir>/checkpoints/last.pt`, written by rank 0 every save_every steps and at
the end) hold everything a resume needs; a run directory that already holds one resumes from
it, and the resumed run reproduces the uninterrupted one exactly (same data order, per-sample
noise from the stream position, optimizer and EMA state, RNG states). Parameters train in fp32;
on CUDA with run.dtype bf16 the forward runs under bf16 autocast. At the end the EMA weights
are exported to `<run_dir>/<train.export>` (safetensors, in run.dtype).

Divergence: before every save and before the export, every rank checks that the weights, the
optimizer state and the EMA are finite; if not, the run stops with an error and writes nothing,
so `last.pt` stays the last good checkpoint (and a resume starts from it).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from longlive.assembly import build_codec, build_model, build_text_encoder
from longlive.distributed import DistInfo, all_gather_objects, barrier, init_distributed, shutdown
from longlive.errors import ConfigError, LongLiveError
from longlive.lora import adapter_state_dict, has_adapters, load_adapters, save_adapters
from longlive.quant.format import cast_model, forward_context, refresh_model
from longlive.train.checkpoint import (load_checkpoint, nonfinite_tensors, remove_stale_temporaries, rng_state,
                                       save_checkpoint, set_rng_state)
from longlive.train.config import TrainConfig, resolve_path, train_config
from longlive.train.data import BatchEncoder, DataStream, SkippingDataset
from longlive.train.ema import EMA

if TYPE_CHECKING:
    from longlive.run import RunContext

log = logging.getLogger(__name__)

_LOGGED = ("loss", "mse", "sigma", "grad_norm")


def run_training(run: RunContext) -> dict:
    """Structure [train], join the process group (torchrun), train, export; returns the summary."""
    run.task_config = None
    config = train_config(run)
    config.check(run.experiment.sampler.frames_per_chunk)
    run.task_config = config
    info, run.device = init_distributed(run.device)
    try:
        return Trainer(run, config, info).fit()
    finally:
        shutdown(info)


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


class Trainer:
    """The parts of one training run and the loop over them (module docstring)."""

    def __init__(self, run: RunContext, config: TrainConfig, info: DistInfo) -> None:
        self.run, self.config, self.info = run, config, info
        self.step = 0
        self.saved_step: int | None = None  # step of the newest checkpoint written or resumed from
        self.history: list[tuple[int, float]] = []
        self._tokens, self._clock = 0, time.perf_counter()  # since the last log
        torch.manual_seed(run.experiment.run.seed + info.rank)  # plugins' draws; ours are per sample
        self._build_data()
        self._build_model()
        self.checkpoints = run.run_dir / "checkpoints" if run.run_dir is not None else None
        self.eval_prompts = None
        if config.eval_every and info.is_main:
            from longlive.train.evaluate import eval_prompts

            self.eval_prompts = eval_prompts(run, config)

    def _build_data(self) -> None:
        run, cfg = self.run, self.config
        factory = run.components.get("dataset", cfg.dataset, where="train.dataset").value
        self.dataset = SkippingDataset(factory(run, cfg), max_bad=cfg.max_bad_samples)
        self.codec = build_codec(run)
        self.text = build_text_encoder(run)
        self.encoder = BatchEncoder(self.codec, self.text, device=run.device, dtype=run.dtype,
                                    cache=cfg.cache_latents, caption_dropout=cfg.caption_dropout,
                                    encode_video=run.layout.encode_video)  # SP: this rank's frames (halo)
        # the dp rank selects the data: the sp ranks of a group draw the same samples (longlive/parallel.py)
        self.stream = DataStream(len(self.dataset), batch_size=cfg.batch_size, seed=run.experiment.run.seed,
                                 rank=run.mesh.dp_rank, world_size=run.mesh.dp)

    def _build_model(self) -> None:
        run, cfg = self.run, self.config
        init = str(resolve_path(cfg.init_from, run, "train.init_from")) if cfg.init_from is not None else None
        model = cast_model(build_model(run, role="generator", training=True, checkpoint=init, where="train.init_from",
                                       dtype=torch.float32), torch.float32).train()
        self.adapters = has_adapters(model)
        model.checkpoint_blocks = cfg.checkpoint_blocks
        if not any(p.requires_grad for p in model.parameters()):  # no adapters: train everything
            model.requires_grad_(True)
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay)
        self.ema = EMA(model, decay=cfg.ema_decay, start=cfg.ema_start)
        self.objective = run.hook.longlive_make_objective(run=run)
        self.ddp = None
        self.entry: Any = model
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [run.device] if run.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(_EntryPoints(model), device_ids=ids)
            self.entry = Replicated(self.ddp, model)
        self.autocast = run.device.type == "cuda" and run.dtype == torch.bfloat16
        self.generator = torch.Generator(device=run.device)
        log.info("training %s: %d parameters, %s, %d samples, global batch %d x %d accumulation, %s",
                 run.experiment.model.preset, sum(p.numel() for p in self.params), cfg.mode, len(self.dataset),
                 self.stream.global_batch, cfg.grad_accum, "bf16 autocast" if self.autocast else "fp32")

    # ---- one optimizer step ------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """Linear warmup over warmup_steps, then constant; `step` is 0-based."""
        warmup = self.config.warmup_steps
        return self.config.lr * (min(1.0, (step + 1) / warmup) if warmup else 1.0)

    def train_step(self) -> dict[str, torch.Tensor]:
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            batch = self.encoder(self.dataset, *self.stream.next())
            self._count_tokens(batch["latents"])
            defer_sync = self.ddp is not None and micro < cfg.grad_accum - 1
            with self.ddp.no_sync() if defer_sync else contextlib.nullcontext():
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast), forward_context(self.model):
                    loss, metrics = self.objective(self.entry, batch, self.generator)
                # under SP the loss is this rank's share; DDP averages over dp x sp ranks, so x sp sums the shares
                (loss * self.run.mesh.sp / cfg.grad_accum).backward()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value.detach().float() / cfg.grad_accum
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        totals["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, max_norm).detach().float()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.step()
        self.step += 1
        refresh_model(self.model)  # quantized copies of the master weights are stale now
        self.run.hook.longlive_optimizer_step_done(model=self.model, step=self.step, run=self.run)
        self.ema.update(self.model, self.step)
        return totals

    def _count_tokens(self, latents: torch.Tensor) -> None:
        pt, ph, pw = self.model.config.patch
        f, h, w = latents.shape[2:]
        halves = 2 if self.config.mode == "teacher_forcing" else 1
        self._tokens += halves * (f // pt) * (h // ph) * (w // pw) * latents.shape[0] * self.run.mesh.dp

    # ---- the loop ---------------------------------------------------------------------------

    def fit(self) -> dict:
        cfg = self.config
        self.resume()
        steps = range(self.step, cfg.steps)
        if self.info.is_main:
            from longlive.monitor import progress

            steps = progress(steps, desc="train", total=len(steps), unit="step")
        window: dict[str, torch.Tensor] = {}
        self._tokens, self._clock, count = 0, time.perf_counter(), 0
        started = time.perf_counter()
        for _ in steps:
            for key, value in self.train_step().items():
                window[key] = window.get(key, 0.0) + value
            count += 1
            last = self.step == cfg.steps or (self.step % cfg.log_every == 0 and self._out_of_time(started))
            if self.step % cfg.log_every == 0 or last:
                self.log_window(window, count)
                window, count = {}, 0
            if (cfg.save_every and self.step % cfg.save_every == 0) or last:
                self.save()
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or last):
                self.evaluate()
            if last:
                break
        return self.finish()

    def _out_of_time(self, started: float) -> bool:
        """train.max_seconds is spent (decided on rank 0, so every rank stops at the same step)."""
        if self.config.max_seconds is None:
            return False
        flag = torch.tensor(float(time.perf_counter() - started > self.config.max_seconds), device=self.run.device)
        if self.info.distributed:
            torch.distributed.broadcast(flag, src=0)
        if flag.item():
            log.info("train.max_seconds = %s reached at step %d: stopping", self.config.max_seconds, self.step)
        return bool(flag.item())

    def log_window(self, window: dict[str, torch.Tensor], count: int) -> None:
        """Average the window's metrics over steps and ranks; rank 0 logs them."""
        values = torch.stack([window.get(k, torch.zeros(())).to(self.run.device) for k in _LOGGED]) / count
        if self.info.distributed:
            torch.distributed.all_reduce(values)
            values /= self.info.world_size
        loss, mse, sigma, grad_norm = values.tolist()
        if not math.isfinite(loss):
            raise LongLiveError(f"training diverged: loss is {loss} at step {self.step}; lower train.lr, "
                                f"set train.grad_clip or train.warmup_steps")
        elapsed, self._clock = time.perf_counter() - self._clock, time.perf_counter()
        scalars = {"train/loss": loss, "train/mse": mse, "train/sigma": sigma, "train/grad_norm": grad_norm,
                   "train/lr": self.lr_at(self.step - 1), "train/tokens_per_s": self._tokens / max(elapsed, 1e-9),
                   "train/epoch": self.stream.epoch, "train/bad_samples": len(self.dataset.bad)}
        self._tokens = 0
        self.history.append((self.step, loss))
        if self.info.is_main:
            self.run.log(self.step, scalars)
            log.debug("step %d: loss %.5f, grad norm %.4f", self.step, loss, grad_norm)

    # ---- checkpoints, evaluation, export ----------------------------------------------------

    def experiment_toml(self) -> str:
        """The resolved experiment of this run (what experiment.toml holds)."""
        from longlive.config import dumps_toml, experiment_to_table

        return dumps_toml(experiment_to_table(self.run.experiment, self.run.plugin_configs, self.config))

    def state_dict(self, rng: list[dict]) -> dict:
        model = adapter_state_dict(self.model) if self.adapters else self.model.state_dict()
        return {"step": self.step, "experiment": self.experiment_toml(), "model": model,
                "optimizer": self.optimizer.state_dict(), "ema": self.ema.state_dict(),
                "data": self.stream.state_dict(), "rng": rng,
                "mode": self.config.mode, "history": [list(h) for h in self.history],
                "bad_samples": sorted(self.dataset.bad)}

    def check_finite(self) -> None:
        """Raise when the weights, optimizer state or EMA hold NaN/inf (every rank: the state is replicated)."""
        bad = nonfinite_tensors({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()["state"],
                                 "ema": self.ema.shadow})
        if not bad:
            return
        kept = (f"the last good checkpoint (step {self.saved_step}) stays in {self.checkpoints / 'last.pt'}"
                if self.saved_step is not None else "no checkpoint was written")
        raise LongLiveError(f"training diverged by step {self.step}: {len(bad)} tensors hold NaN or inf "
                            f"(e.g. {', '.join(bad[:2])}); nothing saved, {kept}; lower train.lr, "
                            f"set train.grad_clip or train.warmup_steps")

    def save(self) -> None:
        if self.checkpoints is None:
            return
        self.check_finite()
        rng = all_gather_objects(self.info, rng_state())  # a collective: every rank takes part
        if self.info.is_main:
            save_checkpoint(self.state_dict(rng), self.checkpoints, keep_previous=self.config.keep_previous)
        self.saved_step = self.step
        barrier(self.info)

    def resume(self) -> None:
        if self.checkpoints is not None and self.info.is_main:
            remove_stale_temporaries(self.checkpoints)
        state = load_checkpoint(self.checkpoints) if self.checkpoints is not None else None
        if state is None:
            return
        from longlive.model.checkpoint import load_strict

        self.check_changes(state)
        if self.adapters:
            load_adapters(self.model, state["model"], where=f"adapters of checkpoint in {self.checkpoints}")
        else:
            load_strict(self.model, state["model"], what=f"model of checkpoint in {self.checkpoints}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.stream.load_state_dict(state["data"])
        self.step = self.saved_step = int(state["step"])
        self.history = [(int(s), float(v)) for s, v in state["history"]]
        self.dataset.bad.update({int(i): "skipped before the resume" for i in state.get("bad_samples", [])})
        if len(state["rng"]) == self.info.world_size:
            set_rng_state(state["rng"][self.info.rank])
        else:
            log.warning("resume: checkpoint has RNG states of %d ranks, this run has %d; global RNGs not restored",
                        len(state["rng"]), self.info.world_size)
        log.info("resumed at step %d (data position %d)", self.step, self.stream.position)

    def check_changes(self, state: dict) -> None:
        """Refuse a resume under an experiment that breaks exact resume (longlive/train/resume.py)."""
        from longlive.train.resume import breaking_changes, describe, tomllib, write_text_atomic

        saved = state.get("experiment")
        if saved is None:  # a checkpoint of an older version
            log.warning("resume: the checkpoint does not record its experiment; changes cannot be checked")
            return
        changes = breaking_changes(saved, tomllib.loads(self.experiment_toml()))
        if not changes:
            return
        step, run_dir = int(state["step"]), self.run.run_dir
        if not self.run.allow_changed_resume:
            if self.info.is_main:  # experiment.toml goes on recording what the checkpoint was trained under
                write_text_atomic(run_dir / "experiment.toml", saved)
            raise ConfigError(f"resume: the experiment differs from the one the checkpoint (step {step}) was trained "
                              f"under: {describe(changes)}; restore the values, or pass --allow-changed-resume to "
                              f"continue under the new ones (both are recorded)")
        if self.info.is_main:
            write_text_atomic(run_dir / f"experiment.step-{step}.toml", saved)
        log.warning("resume: continuing step %d under a changed experiment (%s); the experiment of steps 1-%d is "
                    "kept in %s", step, describe(changes), step, run_dir / f"experiment.step-{step}.toml")

    def evaluate(self) -> None:
        if self.info.is_main:
            from longlive.train.evaluate import evaluate

            chunks, fps = self.eval_prompts
            evaluate(self.run, chunks=chunks, fps=fps, model=self.model, ema=self.ema, codec=self.codec,
                     text_encoder=self.text, step=self.step)
        barrier(self.info)

    def finish(self) -> dict:
        from longlive.model.checkpoint import save_safetensors_atomic

        export = self.run.output_path(self.config.export)
        if export is not None:
            self.check_finite()
        if export is not None and self.info.is_main and self.adapters:  # adapter-only, EMA weights
            state = {k: v for k, v in self.ema.model_state(self.model).items() if k in adapter_state_dict(self.model)}
            save_adapters(self.model, export, state=state, metadata={"step": str(self.step), "weights": "ema"})
        elif export is not None and self.info.is_main:
            save_safetensors_atomic(self.ema.model_state(self.model, self.run.dtype), export,
                                    metadata={"preset": self.run.experiment.model.preset, "step": str(self.step),
                                              "weights": "ema", "prediction": self.model.config.prediction})
        barrier(self.info)
        loss = self.history[-1][1] if self.history else math.nan
        return {"steps": self.step, "loss": loss, "losses": [v for _, v in self.history],
                "export": str(export) if export is not None else None,
                "bad_samples": [self.dataset.bad[i] for i in sorted(self.dataset.bad)],
                "summary": f"trained {self.step} steps ({self.config.mode}); final loss {loss:.4f}"
                           + (f"; {len(self.dataset.bad)} corrupt samples skipped" if self.dataset.bad else "")
                           + (f"; EMA weights -> {export}" if export is not None else "")}
