"""The flow-matching training objective: bidirectional diffusion and AR teacher forcing.

For a clean latent video x0 [B, C, F, H, W] and noise eps (module docstring of longlive.sampling):

    x_t = (1 - sigma) x0 + sigma eps,    target v = eps - x0,    model input t = 1000 sigma

Timesteps are drawn on LongLive's discrete training grid (a FlowMatchScheduler with
num_train_timesteps N = 1000, shift `timestep_shift`, extra_one_step): for i = 0..N-1,

    u_i = 1 - i / N                                   (1, 0.999, ..., 0.001)
    sigma_i = shift u_i / (1 + (shift - 1) u_i)       (shift_sigma)
    t_i = 1000 sigma_i

and an index i is drawn uniformly: once per sample (bidirectional, `forward`; causal, `forward`
under the block-causal mask of chunks of `frames_per_chunk` frames within `window_frames`, as a
DMD critic sees a generated video) or once per chunk of `frames_per_chunk` latent frames
(teacher forcing, `forward_teacher` with clean = x0, every frame of a chunk sharing its chunk's
timestep). With `timestep_range` (t_min, t_max), the grid's noise levels are clamped to
[t_min / 1000, t_max / 1000] (LongLive's DMD critic: [20, 980] after the shift).

A batch may carry "clean_frames" [B, F] (bool): those frames are given clean (sigma = 0, t = 0)
and carry no loss (I2V: the image frame); a sample's loss is then the mean over its other frames,
and the batch's the mean of its samples' (so it does not depend on how samples meet on ranks). Under
teacher forcing such a frame is the clean image in both streams, clean and noisy, as at inference
(LongLive's `independent_first_frame`: the image latent replaces latent frame 0, timestep zeroed).

With `recycling` (an ErrorBuffers, longlive/train/error_recycling.py; teacher forcing only) the
clean context, the latent before noising and the noise get recycled model errors, and this
prediction's errors are recorded; the target stays eps - x0.

Loss: per-frame MSE over (C, H, W), times the time weight w(t) of the frame's timestep,
averaged over batch and frames: L = mean_{b,f} w(t_bf) * mean_{c,h,w} (v_pred - v)^2.
Time weighting "gaussian" is LongLive's "bsmntw" weighting (DiffSynth's FlowMatchScheduler
training weights, which LongLive 2.0 uses): on the grid above

    y_i = exp(-2 ((t_i - 500) / 1000)^2),    y'_i = y_i - min_j y_j,    w_i = y'_i / mean_j y'_j

a bump centred at t = 500, zero at the grid point farthest from 500 (t = 1000 at shift 5), and
mean 1 over the grid, so E[w] = 1 under uniform index sampling. "uniform" is w = 1.

With `caption_start_weight` c != 1, the frames of every chunk that starts a caption (chunk 0,
and each chunk whose text context differs from the chunk before: a cut or a prompt switch) are
weighted c times more on top of w(t); there only the caption tells what comes next, as no earlier
chunk of the same caption shows it. A sample whose captions were dropped (caption_dropout) has one
caption, so only its chunk 0 counts. The mean of the weights is not renormalised.

Randomness: every sample carries a seed (DataStream derives it from run.seed and the sample's
position in the stream); the objective re-seeds the `generator` it is given with each sample's
seed before drawing that sample's noise and timesteps. The draws therefore do not depend on
how a global batch is split over ranks or micro-steps, and a resumed run redraws them exactly.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from longlive.errors import ConfigError
from longlive.sampling import TRAIN_TIMESTEPS, FlowMatching


if TYPE_CHECKING:
    from longlive.layout import TeacherForcingLayout
    from longlive.run import RunContext
    from longlive.train.error_recycling import ErrorBuffers

log = logging.getLogger(__name__)


def sigma_grid(shift: float, num_timesteps: int = TRAIN_TIMESTEPS) -> torch.Tensor:
    """The shifted training noise levels sigma_i, i = 0..N-1 (descending), float64 [N]."""
    u = 1.0 - torch.arange(num_timesteps, dtype=torch.float64) / num_timesteps
    return FlowMatching.shift_sigma(u, shift)


def time_weights(timesteps: torch.Tensor, weighting: str) -> torch.Tensor:
    """Weights w_i of the grid timesteps t_i [N] (float64), normalised to mean 1 (module docstring)."""
    if weighting == "uniform":
        return torch.ones_like(timesteps)
    if weighting != "gaussian":
        raise ConfigError(f"train.time_weighting: {weighting!r} is not known; use gaussian or uniform")
    y = torch.exp(-2.0 * ((timesteps - TRAIN_TIMESTEPS / 2) / TRAIN_TIMESTEPS) ** 2)
    y = y - y.min()
    return y / y.mean()


class FlowMatchingObjective:
    """`objective(model, batch, generator) -> (loss, metrics)`; see the module docstring.

    `batch`: "latents" [B, C, F, H, W] (x0), "context" [B, n_chunks, L, D] (text encoder output,
    one prompt per chunk), "seeds" [B] int64. `generator`: a torch.Generator on the latents'
    device, re-seeded per sample. `metrics`: detached 0-d tensors (no host sync here).
    """

    def __init__(self, *, mode: str, frames_per_chunk: int, shift: float, weighting: str,
                 caption_start_weight: float = 1.0, patch: tuple[int, int, int] | None = None,
                 window_frames: int | None = None, timestep_range: tuple[float, float] | None = None,
                 layout: TeacherForcingLayout | None = None) -> None:
        if mode not in ("teacher_forcing", "bidirectional", "causal"):
            raise ConfigError(f"train.mode: {mode!r} is not known; use teacher_forcing or bidirectional")
        if layout is not None and layout.sp > 1 and mode != "teacher_forcing":
            raise ConfigError(f"train.mode = {mode!r} under parallel.sp = {layout.sp}: sequence-parallel training "
                              "splits teacher forcing only; set train.mode = \"teacher_forcing\" or parallel.sp = 1")
        self.layout = layout if layout is not None and layout.sp > 1 else None  # SP: this rank's share (below)
        if mode == "causal" and patch is None:
            raise ValueError("the causal objective needs the DiT's patch (tokens per latent frame)")
        self.mode, self.frames_per_chunk = mode, frames_per_chunk
        self.patch, self.window_frames = patch, window_frames
        self.caption_start_weight = caption_start_weight
        sigmas = sigma_grid(shift)
        if timestep_range is not None:
            sigmas = sigmas.clamp(timestep_range[0] / TRAIN_TIMESTEPS, timestep_range[1] / TRAIN_TIMESTEPS)
        self.sigmas = sigmas.float()  # [N]
        self.weights = time_weights(sigmas * TRAIN_TIMESTEPS, weighting).float()  # [N], mean 1

    @classmethod
    def from_run(cls, run: RunContext) -> FlowMatchingObjective:
        from longlive.train.config import train_config

        cfg = train_config(run)
        return cls(mode=cfg.mode, frames_per_chunk=run.experiment.sampler.frames_per_chunk,
                   shift=cfg.timestep_shift, weighting=cfg.time_weighting,
                   caption_start_weight=cfg.caption_start_weight, layout=run.layout)

    def draw(self, x0: torch.Tensor, seeds: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise like x0 and grid indices [B, F] (constant per chunk, or per sample if bidirectional)."""
        batch, frames = x0.shape[0], x0.shape[2]
        groups = 1 if self.mode in ("bidirectional", "causal") else self._chunks(frames)
        noise = torch.empty_like(x0, dtype=torch.float32)
        index = torch.empty(batch, groups, dtype=torch.long, device=x0.device)
        for b, seed in enumerate(seeds.tolist()):
            generator.manual_seed(int(seed))
            noise[b] = torch.randn(x0.shape[1:], generator=generator, device=x0.device, dtype=torch.float32)
            index[b] = torch.randint(0, len(self.sigmas), (groups,), generator=generator, device=x0.device)
        return noise, index.repeat_interleave(frames // groups, dim=1)  # [B, C, F, H, W], [B, F]

    def __call__(self, model: Any, batch: dict, generator: torch.Generator, *,
                 recycling: ErrorBuffers | None = None) -> tuple[torch.Tensor, dict]:
        x0 = batch["latents"].float()  # [B, C, F, H, W]
        noise, index = self.draw(x0, batch["seeds"], generator)
        sigma = self.sigmas.to(x0.device)[index]  # [B, F]
        clean = batch.get("clean_frames")  # [B, F] bool or None
        if clean is not None:
            if self.mode == "bidirectional":
                raise ConfigError("clean_frames (I2V) need per-frame timesteps: use teacher forcing or causal")
            sigma = torch.where(clean, torch.zeros_like(sigma), sigma)
        context_x0, noised_x0, noise_in = x0, x0, noise
        if recycling is not None:
            if self.mode != "teacher_forcing" or self.layout is not None:
                raise ConfigError("train.error_recycling: needs train.mode = \"teacher_forcing\" and parallel.sp = 1")
            context_x0, noised_x0, noise_in = recycling.inject(x0, noise, sigma, clean, batch["seeds"])
        x_t = FlowMatching.add_noise(noised_x0, noise_in, sigma)
        target = FlowMatching.velocity_target(x0, noise)
        t = FlowMatching.timestep(sigma)  # [B, F]
        weight = self.weights.to(x0.device)[index]  # [B, F]
        if self.caption_start_weight != 1.0:
            weight = weight * self._caption_starts(batch["context"], x0.shape[2])
        if self.layout is not None:
            if clean is not None:
                raise ConfigError("clean_frames (I2V) under sequence parallelism are not supported; set parallel.sp = 1")
            return self._sequence_parallel_loss(model, x0, x_t, t, target, weight, batch["context"], sigma)
        if self.mode == "teacher_forcing":
            pred = model.forward_teacher(context_x0, x_t, t, batch["context"], frames_per_block=self.frames_per_chunk)
        elif self.mode == "causal":
            pred = model(x_t, t, batch["context"], mask_mod=self._causal_mask(x0))
        else:
            pred = model(x_t, t[:, 0], batch["context"])
        mse = (pred.float() - target).pow(2).mean(dim=(1, 3, 4))  # [B, F]
        if recycling is not None:
            recycling.record(pred, target, sigma, clean)
        if clean is None:
            loss, mse_mean = (mse * weight).mean(), mse.detach().mean()
        else:
            keep = (~clean).float()  # per-sample means, so the loss does not depend on how samples meet on ranks
            loss = ((mse * weight * keep).sum(1) / keep.sum(1).clamp(min=1.0)).mean()
            mse_mean = ((mse.detach() * keep).sum(1) / keep.sum(1).clamp(min=1.0)).mean()  # the logged MSE skips them too
        metrics = {"loss": loss.detach(), "mse": mse_mean, "sigma": sigma.mean()}
        return loss, metrics

    def _sequence_parallel_loss(self, model: Any, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                                target: torch.Tensor, weight: torch.Tensor, context: torch.Tensor,
                                sigma: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Teacher forcing under SP: every rank of the group has the same sample and draws; it
        predicts its noisy frames (`layout.teacher_split`) and returns its share of the loss,
        sum over its frames of w * mse / the global count of loss-bearing frames (B x F), so the
        shares of the group sum to the one-device loss (and their gradients to its gradient).
        The metrics are the group's totals (one all-reduce)."""
        split = self.layout.teacher_split(x0.shape[2], self.frames_per_chunk)
        pred = model.forward_teacher(x0, x_t, t, context, frames_per_block=self.frames_per_chunk, layout=self.layout)
        local = slice(split.noisy_start, split.noisy_start + split.noisy_frames)
        mse = (pred.float() - target[:, :, local]).pow(2).mean(dim=(1, 3, 4))  # [B, this rank's noisy frames]
        count = x0.shape[0] * x0.shape[2]  # loss-bearing frames of the sample(s), over the group
        loss = (mse * weight[:, local]).sum() / count
        totals = self.layout.reduce_sum(torch.stack([loss.detach(), mse.detach().sum() / count]))
        return loss, {"loss": totals[0], "mse": totals[1], "sigma": sigma.mean()}

    def _causal_mask(self, x0: torch.Tensor):
        """The chunk-causal mask of inference (within window_frames) over x0's token grid."""
        from longlive.model.attention import block_causal_mask

        pt, ph, pw = self.patch
        frames, height, width = x0.shape[2:]
        return block_causal_mask(frames // pt, (height // ph) * (width // pw), self.frames_per_chunk // pt,
                                 self.window_frames // pt if self.window_frames is not None else None)

    def _caption_starts(self, context: torch.Tensor, frames: int) -> torch.Tensor:
        """Frame weights [B, F]: caption_start_weight in chunks that start a caption, else 1."""
        starts = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)  # [B, n_chunks]
        starts[:, 1:] = (context[:, 1:] != context[:, :-1]).flatten(2).any(-1)
        if starts.shape[1] != self._chunks(frames):
            raise ConfigError(f"train.caption_start_weight: {starts.shape[1]} captions for {frames} latent frames; "
                              f"the batch needs one caption per chunk of {self.frames_per_chunk} frames")
        weight = torch.where(starts, self.caption_start_weight, 1.0).float()  # [B, n_chunks]
        return weight.repeat_interleave(self.frames_per_chunk, dim=1)

    def _chunks(self, frames: int) -> int:
        if frames % self.frames_per_chunk:
            raise ConfigError(f"{frames} latent frames per sample are not a multiple of "
                              f"sampler.frames_per_chunk = {self.frames_per_chunk}; fix train.num_frames")
        return frames // self.frames_per_chunk
