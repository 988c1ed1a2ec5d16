"""The `train` task: the loop that runs a training algorithm, with data, logging, checkpoints and export.

The algorithm (the `longlive_make_training_algorithm` role, longlive/train/algorithm.py) owns the
networks, optimizers, losses and update schedule; the core's is teacher forcing / bidirectional
diffusion (longlive/train/teacher_forcing.py), the dmd plugin's is DMD distillation. This
module builds the data pipeline (dataset, DataStream, codec + text encoder, frozen), runs one
`algorithm.train_step(step)` per optimizer step, and logs every log_every steps the algorithm's
metrics (averaged over the steps that reported them and over ranks) as train/<name>, its
learning rates, train/tokens_per_s (DiT sequence tokens of all ranks per second of wall time),
train/epoch and train/bad_samples. Teacher forcing logs train/loss, train/mse, train/sigma,
train/grad_norm (before clipping) and train/lr.

Checkpoints (`<run_dir>/checkpoints/last.pt`, written by rank 0 every save_every steps and at
the end) hold everything a resume needs: every trained network (adapters only for LoRA), its
optimizer and EMA (the algorithm's `state_dict`), data position, RNG states, loss history. A run
directory that already holds one resumes from it, and the resumed run reproduces the
uninterrupted one exactly. Parameters train in fp32; on CUDA with run.dtype bf16 the forward
runs under bf16 autocast. At the end the algorithm exports its result to
`<run_dir>/<train.export>` (teacher forcing: the EMA weights, safetensors in run.dtype).
Every rank takes part in a save and in the export (a network sharded by FSDP2 gathers its
tensors to rank 0); rank 0 writes, in the same format under DDP and FSDP2.

Divergence: before every save and before the export, every rank checks that every network's
weights, optimizer state and EMA are finite; if not, the run stops with an error and writes
nothing, so `last.pt` stays the last good checkpoint (and a resume starts from it).
"""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from longlive.assembly import build_codec, build_text_encoder
from longlive.distributed import DistInfo, all_gather_objects, barrier, init_distributed, shutdown
from longlive.errors import ConfigError, LongLiveError
from longlive.train.checkpoint import (load_checkpoint, nonfinite_tensors, remove_stale_temporaries, rng_state,
                                       save_checkpoint, set_rng_state)
from longlive.train.config import TrainConfig, train_config
from longlive.train.algorithm import TrainingContext
from longlive.train.data import BatchEncoder, DataStream, SkippingDataset

if TYPE_CHECKING:
    from longlive.run import RunContext
    from longlive.train.ema import EMA

log = logging.getLogger(__name__)

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
        self._build_algorithm()
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
                                    i2v_probability=cfg.i2v_probability,
                                    encode_video=run.layout.encode_video)  # SP: this rank's frames (halo)
        # the dp rank selects the data: the sp ranks of a group draw the same samples (longlive/parallel.py)
        self.stream = DataStream(len(self.dataset), batch_size=cfg.batch_size, seed=run.experiment.run.seed,
                                 rank=run.mesh.dp_rank, world_size=run.mesh.dp)

    def _build_algorithm(self) -> None:
        run, cfg = self.run, self.config
        self.context = TrainingContext(run=run, config=cfg, info=self.info, dataset=self.dataset, stream=self.stream,
                                       encoder=self.encoder, codec=self.codec, text=self.text)
        self.algorithm = run.hook.longlive_make_training_algorithm(context=self.context)
        trained = sum(p.numel() for net in self.algorithm.networks.values() for p in net.params)
        log.info("training %s (%s: %s): %d parameters, %d samples, global batch %d x %d accumulation, %s",
                 run.experiment.model.preset, self.algorithm.name, ", ".join(self.algorithm.networks), trained,
                 len(self.dataset), self.stream.global_batch, cfg.grad_accum,
                 "bf16 autocast" if run.device.type == "cuda" and run.dtype == torch.bfloat16 else "fp32")

    @property
    def model(self) -> nn.Module:
        """The network the evaluation shows (the generator)."""
        return self.algorithm.networks[self.algorithm.eval_network].model

    @property
    def ema(self) -> EMA | None:
        return self.algorithm.networks[self.algorithm.eval_network].ema

    # ---- one optimizer step ------------------------------------------------------------------

    def train_step(self) -> dict[str, torch.Tensor]:
        metrics, tokens = self.algorithm.train_step(self.step)
        self._tokens += tokens
        self.step += 1
        return metrics

    # ---- the loop ---------------------------------------------------------------------------

    def fit(self) -> dict:
        cfg = self.config
        self.resume()
        steps = range(self.step, cfg.steps)
        if self.info.is_main:
            from longlive.monitor import progress

            steps = progress(steps, desc="train", total=len(steps), unit="step")
        window: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        self._tokens, self._clock = 0, time.perf_counter()
        started = time.perf_counter()
        for _ in steps:
            for key, value in self.train_step().items():
                window[key] = window.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
            last = self.step == cfg.steps or (self.step % cfg.log_every == 0 and self._out_of_time(started))
            if self.step % cfg.log_every == 0 or last:
                self.log_window(window, counts)
                window, counts = {}, {}
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

    def log_window(self, window: dict[str, torch.Tensor], counts: dict[str, int]) -> None:
        """Average the window's metrics over the steps that reported each and over ranks; rank 0 logs them."""
        names = self.algorithm.logged
        values = torch.stack([window.get(k, torch.zeros(())).to(self.run.device) for k in names])
        values = values / torch.tensor([float(max(counts.get(k, 0), 1)) for k in names], device=self.run.device)
        if self.info.distributed:
            torch.distributed.all_reduce(values)
            values /= self.info.world_size
        averaged = dict(zip(names, values.tolist()))
        loss = averaged[self.algorithm.loss_key]
        if not math.isfinite(loss):
            raise LongLiveError(f"training diverged: loss is {loss} at step {self.step}; lower train.lr, "
                                f"set train.grad_clip or train.warmup_steps")
        elapsed, self._clock = time.perf_counter() - self._clock, time.perf_counter()
        scalars = {f"train/{k}": v for k, v in averaged.items() if counts.get(k, 0)}
        scalars.update({f"train/{k}": v for k, v in self.algorithm.learning_rates(self.step - 1).items()})
        scalars.update({"train/tokens_per_s": self._tokens / max(elapsed, 1e-9),
                        "train/epoch": self.stream.epoch, "train/bad_samples": len(self.dataset.bad)})
        self._tokens = 0
        self.history.append((self.step, loss))
        if self.info.is_main:
            self.run.log(self.step, scalars)
            log.debug("step %d: %s", self.step, ", ".join(f"{k} {v:.5f}" for k, v in averaged.items() if counts.get(k)))

    # ---- checkpoints, evaluation, export ----------------------------------------------------

    def experiment_toml(self) -> str:
        """The resolved experiment of this run (what experiment.toml holds)."""
        from longlive.config import dumps_toml, experiment_to_table

        return dumps_toml(experiment_to_table(self.run.experiment, self.run.plugin_configs, self.config))

    def state_dict(self, algorithm: dict, rng: list[dict]) -> dict:
        """The checkpoint: the algorithm's state (`algorithm.state_dict()`), the loop's, every rank's RNGs."""
        return {"step": self.step, "experiment": self.experiment_toml(), **algorithm,
                "data": self.stream.state_dict(), "rng": rng,
                "mode": self.algorithm.name, "history": [list(h) for h in self.history],
                "bad_samples": sorted(self.dataset.bad)}

    def check_finite(self) -> None:
        """Raise when the weights, optimizer state or EMA hold NaN/inf, on every rank alike (each checks
        its own tensors, the count is summed: FSDP2 ranks hold different shards)."""
        bad = nonfinite_tensors({name: net.finite_state() for name, net in self.algorithm.networks.items()})
        if self.info.distributed:
            count = torch.tensor(float(len(bad)), device=self.run.device)
            torch.distributed.all_reduce(count)
            if count.item() and not bad:
                bad = [f"{int(count.item())} tensor shards on other ranks"]
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
        algorithm = self.algorithm.state_dict()  # every rank: sharded networks gather to rank 0
        if self.info.is_main:
            save_checkpoint(self.state_dict(algorithm, rng), self.checkpoints, keep_previous=self.config.keep_previous)
        self.saved_step = self.step
        barrier(self.info)

    def resume(self) -> None:
        if self.checkpoints is not None and self.info.is_main:
            remove_stale_temporaries(self.checkpoints)
        state = load_checkpoint(self.checkpoints) if self.checkpoints is not None else None
        if state is None:
            return
        self.check_changes(state)
        self.algorithm.load_state_dict(state, where=f"checkpoint in {self.checkpoints}")
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
        export = self.run.output_path(self.config.export)
        if export is not None:
            self.check_finite()
        if export is not None:  # every rank (sharded networks gather); rank 0 writes
            self.algorithm.export(export, self.step)
        barrier(self.info)
        loss = self.history[-1][1] if self.history else math.nan
        return {"steps": self.step, "loss": loss, "losses": [v for _, v in self.history],
                "export": str(export) if export is not None else None,
                "bad_samples": [self.dataset.bad[i] for i in sorted(self.dataset.bad)],
                "summary": f"trained {self.step} steps ({self.algorithm.name}); final {self.algorithm.loss_key} {loss:.4f}"
                           + (f"; {len(self.dataset.bad)} corrupt samples skipped" if self.dataset.bad else "")
                           + (f"; exported -> {export}" if export is not None else "")}
