"""DMD distillation as a training algorithm: generator (student), frozen teacher (real score), critic.

Networks (each built by `longlive.assembly.build_model` for its role, so `[quant]` picks each
role's format: e.g. a frozen NVFP4 teacher and NVFP4 bases under BF16 LoRA for the others):
- "generator": the student, from train.init_from; LoRA (train.lora_rank > 0) or full;
- "teacher": the real score, frozen, from plugins.dmd.teacher (default train.init_from);
- "critic": the fake score, from plugins.dmd.critic_from (default train.init_from), always LoRA.

One training step (0-based s) takes one batch of captions from the data stream (per-chunk
prompts; with i2v also the latent of each video's first frame, the image; no other frame is
encoded):
1. if s % generator_every == 0, generator update: roll out a video with the inference chunk loop
   and sampler (longlive.pipeline.rollout: random exit step, gradients only at that step and
   only in the chunks that carry the loss), the DMD loss of plugins/dmd/loss.py against the
   teacher and critic (both without gradients, on the whole noisy video under the inference
   block-causal mask), backward, clip, AdamW (generator_lr);
2. critic update (every step): a fresh rollout without gradients, the flow-matching loss of the
   core objective (longlive/train/objective.py, mode "causal", t clamped to [t_min, t_max]) on it,
   backward, clip, AdamW (critic_lr).
All draws (rollout noise, exit steps, DMD and critic timesteps and noise) come from the samples'
seeds and the step, so a resumed run retraces the uninterrupted one and ranks agree.

The student is exported as standalone weights (`train.export`): adapter-only safetensors for
LoRA (what `[model] lora` loads), with the sampler and its step count in the metadata.
"""
from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import torch

from longlive.assembly import build_model, build_sampler, new_chunk_loop
from longlive.errors import ConfigError
from longlive.lora import attach, has_adapters
from longlive.model.attention import block_causal_mask
from longlive.pipeline import ChunkLoop, RolloutPlan, rollout
from longlive.quant.format import forward_context, refresh_model
from longlive.sampling import FlowMatching
from longlive.train.algorithm import Network, TrainingContext, trained_model
from longlive.train.config import resolve_path
from longlive.train.objective import FlowMatchingObjective
from longlive_plugins.dmd.loss import dmd_gradient, dmd_loss, draw_sigmas, guided_real

if TYPE_CHECKING:
    from longlive_plugins.dmd.plugin import DMDConfig

log = logging.getLogger(__name__)

# Salts of the per-sample seeds: one stream of draws per use.
_GENERATOR_ROLLOUT, _CRITIC_ROLLOUT, _DMD_DRAW, _CRITIC_DRAW = 1, 2, 3, 4


def derived_seeds(seeds: torch.Tensor, salt: int) -> list[int]:
    """One seed per sample for the draw `salt` (the samples' stream seeds are unique per position)."""
    return [(int(s) * 1_000_003 + salt * 7_919) % (2**63 - 1) for s in seeds.tolist()]


class DMDAlgorithm:
    """The `dmd` training algorithm (module docstring)."""

    name = "dmd"
    loss_key = "critic/loss"
    logged = ("critic/loss", "critic/mse", "critic/grad_norm", "generator/loss", "generator/grad_norm",
              "dmd/grad_mean", "rollout/exit_step")
    eval_network = "generator"

    def __init__(self, context: TrainingContext, config: DMDConfig) -> None:
        self.context, self.config = context, config
        run, cfg = context.run, context.config
        if cfg.grad_accum != 1:
            raise ConfigError(f"train.grad_accum: {cfg.grad_accum}; the dmd algorithm takes one batch per step, "
                              f"set grad_accum = 1 (raise batch_size or the number of ranks instead)")
        init = self._path(cfg.init_from, "train.init_from")
        self.generator = self._network("generator", init, "train.init_from", lr=config.generator_lr)
        teacher = self._path(config.teacher, "plugins.dmd.teacher") or init
        self.teacher = build_model(run, role="teacher", training=False, checkpoint=teacher, where="plugins.dmd.teacher")
        self.teacher_source = teacher
        critic = self._path(config.critic_from, "plugins.dmd.critic_from") or init
        self.critic = self._network("critic", critic, "plugins.dmd.critic_from", lr=config.critic_lr)
        self.networks = {"generator": self.generator, "critic": self.critic}
        if context.info.distributed:  # one start on every rank (adapters are drawn from per-rank seeds)
            for net in self.networks.values():
                net.broadcast_from_rank0()
        self.sampler = build_sampler(run)
        s = run.experiment.sampler
        self.frames_per_chunk, self.window_frames = s.frames_per_chunk, s.window_frames
        self.chunks = cfg.num_frames // s.frames_per_chunk
        loss_frames = config.loss_frames if config.loss_frames is not None else cfg.num_frames
        self.loss_from_chunk = (cfg.num_frames - loss_frames) // s.frames_per_chunk
        self.critic_objective = FlowMatchingObjective(
            mode="causal", frames_per_chunk=s.frames_per_chunk, shift=cfg.timestep_shift,
            weighting=config.critic_time_weighting, patch=self.generator.model.config.patch,
            window_frames=s.window_frames, timestep_range=(config.t_min, config.t_max))
        self.autocast = run.device.type == "cuda" and run.dtype == torch.bfloat16
        self.draws = torch.Generator(device=run.device)
        self._uncond: torch.Tensor | None = None  # the negative prompt's text context [L, D]
        self._rollout_loop: ChunkLoop | None = None
        log.info("dmd: generator %s, critic LoRA, teacher frozen (%s); %d-step %s rollouts of %d chunks, loss "
                 "from chunk %d; generator every %d steps, guidance %g", "LoRA" if self.generator.adapters
                 else "full", teacher, len(self.sampler.timesteps), type(self.sampler).__name__, self.chunks,
                 self.loss_from_chunk, config.generator_every, config.real_guidance)

    def _path(self, value: str | None, key: str) -> str | None:
        return str(resolve_path(value, self.context.run, key)) if value is not None else None

    def _network(self, name: str, checkpoint: str | None, where: str, *, lr: float) -> Network:
        cfg, config = self.context.config, self.config
        model = trained_model(self.context, name, checkpoint=checkpoint, where=where)
        if name == "critic" and not has_adapters(model):  # a full generator: the critic still trains LoRA
            if config.critic_lora_rank == 0:
                raise ConfigError("plugins.dmd.critic_lora_rank: the critic is a LoRA network; with train.lora_rank "
                                  "= 0 (a full generator) set critic_lora_rank > 0, e.g. 128")
            attach(model, rank=config.critic_lora_rank, alpha=config.critic_lora_alpha or config.critic_lora_rank)
        ema = (cfg.ema_decay, cfg.ema_start) if name in config.ema else None
        return Network.create(name, model, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                              warmup_steps=cfg.warmup_steps, ema=ema)

    # ---- one step ----------------------------------------------------------------------------

    def train_step(self, step: int) -> tuple[dict[str, torch.Tensor], int]:
        batch = self.context.next_prompts(first_frame=self.config.i2v)
        metrics: dict[str, torch.Tensor] = {}
        if step % self.config.generator_every == 0:
            metrics.update(self._generator_update(step, batch))
        metrics.update(self._critic_update(step, batch))
        latents = self._latent_shape(batch)
        pt, ph, pw = self.generator.model.config.patch
        f, h, w = latents[2:]
        updates = 2 if step % self.config.generator_every == 0 else 1  # rollouts: generated video tokens
        tokens = updates * (f // pt) * (h // ph) * (w // pw) * latents[0] * self.context.info.world_size
        return metrics, tokens

    def _latent_shape(self, batch: dict) -> tuple[int, ...]:
        """[B, C, F, h, w] of the rollout (train.num_frames latent frames)."""
        run = self.context.run
        return tuple(run.geometry.latent_shape(self.context.config.num_frames, run.codec_spec.latent_channels,
                                               batch["context"].shape[0]))

    def _contexts(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast))
        for model in (self.generator.model, self.teacher, self.critic.model):
            stack.enter_context(forward_context(model))
        return stack

    def _generator_update(self, step: int, batch: dict) -> dict[str, torch.Tensor]:
        net = self.generator
        net.optimizer.zero_grad(set_to_none=True)
        with self._contexts():
            plan = self._plan(step, 0)
            video = self._rollout(batch, plan, grad=True, salt=_GENERATOR_ROLLOUT)
            loss, grad_mean = self._dmd(video, batch)
        loss.backward()
        metrics = {"generator/loss": loss.detach().float(), "dmd/grad_mean": grad_mean,
                   "rollout/exit_step": torch.tensor(float(plan.exit_steps[0]))}
        metrics["generator/grad_norm"] = self._update(net, step)
        return metrics

    def _critic_update(self, step: int, batch: dict) -> dict[str, torch.Tensor]:
        net = self.critic
        net.optimizer.zero_grad(set_to_none=True)
        with self._contexts():
            with torch.no_grad():
                video = self._rollout(batch, self._plan(step, 1), grad=False, salt=_CRITIC_ROLLOUT)
            fake = {"latents": video.detach().float(), "context": batch["context"],
                    "seeds": torch.tensor(derived_seeds(batch["seeds"], _CRITIC_DRAW))}
            if self.config.i2v:
                fake["clean_frames"] = self._clean_frames(video)
            loss, parts = self.critic_objective(net.model, fake, self.draws)
        loss.backward()
        metrics = {"critic/loss": loss.detach().float(), "critic/mse": parts["mse"]}
        metrics["critic/grad_norm"] = self._update(net, step)
        return metrics

    def _update(self, net: Network, step: int) -> torch.Tensor:
        """Average gradients over ranks, clip, AdamW, refresh quantized copies, EMA."""
        info, run = self.context.info, self.context.run
        if info.distributed:
            for p in net.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= info.world_size
        norm = net.clip_and_step(step, self.context.config.grad_clip)
        refresh_model(net.model)
        run.hook.longlive_optimizer_step_done(model=net.model, step=step + 1, run=run)
        if net.ema is not None:
            net.ema.update(net.model, step + 1)
        return norm

    # ---- rollout and DMD loss ----------------------------------------------------------------

    def _plan(self, step: int, update: int) -> RolloutPlan:
        """Exit steps of the generator's (update 0) or the critic's (1) rollout at `step`."""
        return RolloutPlan.draw(steps=len(self.sampler.timesteps), chunks=self.chunks,
                                seed=self.context.run.experiment.run.seed, step=2 * step + update,
                                same_across_chunks=self.config.same_exit_across_chunks,
                                loss_from_chunk=self.loss_from_chunk)

    def _rollout(self, batch: dict, plan: RolloutPlan, *, grad: bool, salt: int) -> torch.Tensor:
        """The student's video [B, C, F, H, W] for the batch's per-chunk prompts (and image, with i2v)."""
        run, context = self.context.run, batch["context"]
        if context.shape[1] != self.chunks:
            raise ConfigError(f"plugins.dmd: the batch has {context.shape[1]} captions per sample for {self.chunks} "
                              f"chunks; the dataset must give one caption per chunk of train.num_frames")
        shape = self._latent_shape(batch)
        loop = self._loop(shape[0], batch.get("image"))
        noise = torch.empty(shape, dtype=torch.float32, device=run.device)
        for b, seed in enumerate(derived_seeds(batch["seeds"], salt)):
            self.draws.manual_seed(seed)
            noise[b] = torch.randn(shape[1:], generator=self.draws, device=run.device)
        chunks = list(noise.split(self.frames_per_chunk, dim=2))
        contexts = [context[:, i] for i in range(self.chunks)]
        with torch.set_grad_enabled(grad):
            return rollout(loop, chunks, contexts, plan, grad=grad).float()

    def _loop(self, batch: int, image: torch.Tensor | None) -> ChunkLoop:
        """The rollout's chunk loop: built once (its KV cache allocated once), reset per rollout."""
        if self._rollout_loop is None or self._rollout_loop.state.batch != batch:
            run = self.context.run
            self._rollout_loop = new_chunk_loop(run, model=self.generator.model, sampler=self.sampler,
                                                text=self.context.text, geometry=run.geometry, batch=batch,
                                                guidance=1.0)
        state = self._rollout_loop.state
        state.cache.reset()
        state.image_latent, state.chunk_index, state.prompt = image, 0, None
        return self._rollout_loop

    def _clean_frames(self, video: torch.Tensor) -> torch.Tensor:
        """[B, F] bool: the I2V image frame (frame 0) is given clean and carries no loss."""
        clean = torch.zeros(video.shape[0], video.shape[2], dtype=torch.bool, device=video.device)
        clean[:, 0] = True
        return clean

    def _dmd(self, video: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The DMD loss of `video` (plugins/dmd/loss.py) and mean |grad| (detached)."""
        x_t, sigma, keep = self.dmd_inputs(video.detach(), batch)
        with torch.no_grad():
            fake, real = self.score_x0(x_t, sigma, batch["context"])
        grad = dmd_gradient(video.detach(), fake, real, self.frames_per_chunk)
        return dmd_loss(video, grad, keep), grad.abs().mean().detach().float()

    def dmd_inputs(self, x: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The noisy video x_t, its noise levels sigma [B, F] and the loss frames [B, F] (None: all;
        not the I2V image frame, not the frames before plugins.dmd.loss_frames),
        drawn from the samples' seeds (one level per video for T2V, per chunk for I2V, as LongLive)."""
        config = self.config
        generators = []
        for seed in derived_seeds(batch["seeds"], _DMD_DRAW):
            g = torch.Generator(device=x.device)
            g.manual_seed(seed)
            generators.append(g)
        groups = self.chunks if config.i2v else 1
        sigma = draw_sigmas(x.shape[0], x.shape[2], groups=groups, shift=self.context.config.timestep_shift,
                            t_min=config.t_min, t_max=config.t_max, generators=generators, device=x.device)
        noise = torch.stack([torch.randn(x.shape[1:], generator=g, device=x.device) for g in generators])
        keep = None
        if config.i2v:
            clean = self._clean_frames(x)
            sigma = torch.where(clean, torch.zeros_like(sigma), sigma)  # x_t keeps the image frame
            keep = ~clean
        if self.loss_from_chunk:  # loss_frames: only the last frames carry the loss (they alone have gradients)
            late = torch.arange(x.shape[2], device=x.device) >= self.loss_from_chunk * self.frames_per_chunk
            keep = late.expand(x.shape[0], -1) if keep is None else keep & late
        return FlowMatching.add_noise(x, noise, sigma), sigma, keep

    def score_x0(self, x_t: torch.Tensor, sigma: torch.Tensor,
                 context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 of the critic and of the guided teacher at x_t [B, C, F, H, W] (float64), block-causal."""
        pt, ph, pw = self.teacher.config.patch
        frames, height, width = x_t.shape[2:]
        mask = block_causal_mask(frames // pt, (height // ph) * (width // pw), self.frames_per_chunk // pt,
                                 self.window_frames // pt)
        t = FlowMatching.timestep(sigma)  # [B, F]
        x64 = x_t.double()

        def x0(model: Any, ctx: torch.Tensor) -> torch.Tensor:
            v = model(x_t.to(model.dtype), t, ctx, mask_mod=mask)
            return FlowMatching.x0_from_velocity(x64, v.double(), sigma.double())

        fake = x0(self.critic.model, context)
        cond = x0(self.teacher, context)
        uncond = x0(self.teacher, self._uncond_context(context)) if self.config.real_guidance != 0.0 else None
        return fake, guided_real(cond, uncond, self.config.real_guidance)

    def _uncond_context(self, context: torch.Tensor) -> torch.Tensor:
        """The negative prompt's text context, shaped like `context` [B, n, L, D]."""
        if self._uncond is None:
            negative = self.context.run.experiment.sampler.negative_prompt
            with torch.no_grad():
                self._uncond = self.context.text.encode([negative]).float()[0].to(context.device)
        return self._uncond.expand_as(context)

    # ---- state and export --------------------------------------------------------------------

    def learning_rates(self, step: int) -> dict[str, float]:
        return {f"{name}/lr": net.lr_at(step) for name, net in self.networks.items()}

    def state_dict(self) -> dict:
        return {"networks": {name: net.state_dict() for name, net in self.networks.items()},
                "teacher": {"source": self.teacher_source or ""}}

    def load_state_dict(self, state: dict, *, where: str) -> None:
        saved = state["teacher"]["source"] or None
        if saved != self.teacher_source:
            log.warning("resume: the checkpoint's teacher was %s, this run's is %s", saved, self.teacher_source)
        for name, net in self.networks.items():
            net.load_state_dict(state["networks"][name], where=where)

    def export(self, path: Any, step: int) -> None:
        s = self.context.run.experiment.sampler
        self.generator.export(path, run=self.context.run, step=step, metadata={
            "distilled": "dmd", "sampler": s.name, "sampler_steps": str(len(self.sampler.timesteps)),
            "sampler_shift": str(s.shift)})
