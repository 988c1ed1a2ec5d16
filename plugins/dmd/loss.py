"""The DMD generator loss (distribution matching distillation, LongLive 2.0 §6.5 / Self-Forcing).

For a generated video x [B, C, F, H, W] (the student's rollout, with gradients), a noise level
sigma per frame and noise eps:

    x_t     = (1 - sigma) x + sigma eps                                   (x detached)
    fake    = x0 of the critic (fake score) at x_t
    real    = x0 of the frozen teacher (real score) at x_t, with guidance g:
              real = cond + g (cond - uncond)                             (Self-Forcing's form; g = 3)
    grad    = (fake - real) / n_c,   n_c = mean |x - real| over each chunk c of every sample
              (LongLive 2.0 normalizes per chunk of frames_per_chunk frames; Self-Forcing per video)
    L       = 0.5 * mean_kept (x - stopgrad(x - grad))^2                  (float64)

so dL/dx = grad / N over the N kept elements: the student moves along -(fake - real), towards
the teacher's distribution and away from the critic's model of its own. Frames that carry no
loss (I2V: the image frame) are left out of the mean. Everything here is float64, as LongLive.

Timesteps: t ~ U{0, ..., 999}, sigma = shift_sigma(t / 1000, shift), clamped to
[t_min / 1000, t_max / 1000] (LongLive: [20, 980] at shift 5).
"""
from __future__ import annotations

import torch
from einops import rearrange

from longlive.sampling import TRAIN_TIMESTEPS, FlowMatching


def guided_real(cond: torch.Tensor, uncond: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """cond + g (cond - uncond) (g = 0: cond alone, no unconditional pass needed)."""
    if guidance == 0.0 or uncond is None:
        return cond
    return cond + guidance * (cond - uncond)


def dmd_gradient(x: torch.Tensor, fake: torch.Tensor, real: torch.Tensor, frames_per_chunk: int) -> torch.Tensor:
    """(fake - real) / mean|x - real| per sample and chunk, in float64 [B, C, F, H, W] (NaNs -> 0)."""
    x, fake, real = x.double(), fake.double(), real.double()
    chunks = x.shape[2] // frames_per_chunk
    diff = rearrange((x - real).abs(), "b c (n f) h w -> b n (c f h w)", n=chunks)
    norm = diff.mean(dim=-1)  # [B, n]
    norm = norm.repeat_interleave(frames_per_chunk, dim=1)[:, None, :, None, None]  # [B, 1, F, 1, 1]
    return torch.nan_to_num((fake - real) / norm)


def dmd_loss(x: torch.Tensor, grad: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """0.5 * mean over kept frames of (x - stopgrad(x - grad))^2 in float64; keep [B, F] bool or None."""
    x64 = x.double()
    sq = (x64 - (x64 - grad).detach()).pow(2)  # [B, C, F, H, W]
    if keep is None:
        return 0.5 * sq.mean()
    weight = keep.double()[:, None, :, None, None].expand_as(sq)
    return 0.5 * (sq * weight).sum() / weight.sum()


def draw_sigmas(batch: int, frames: int, *, groups: int, shift: float, t_min: float, t_max: float,
                generators: list[torch.Generator], device: torch.device) -> torch.Tensor:
    """Noise levels [B, F]: `groups` draws per sample (1: one level for the whole video), each
    t ~ U{0..999} shifted and clamped (module docstring); sample b draws from generators[b]."""
    rows = []
    for b in range(batch):
        t = torch.randint(0, TRAIN_TIMESTEPS, (groups,), generator=generators[b], device=device).double()
        sigma = FlowMatching.shift_sigma(t / TRAIN_TIMESTEPS, shift)
        rows.append(sigma.clamp(t_min / TRAIN_TIMESTEPS, t_max / TRAIN_TIMESTEPS))
    return torch.stack(rows).repeat_interleave(frames // groups, dim=1).float()  # [B, F]
