"""Error recycling: buffers of the model's own prediction errors, injected into its training inputs.

Teacher forcing trains on ground-truth context, but at inference the context is the model's own
output, with its errors. Error recycling (SVI-style; LongLive 2.0 has it in every AR config) keeps
the errors the model makes during training and adds them back to its inputs, so it learns to
correct them. With the flow-matching notation of longlive/train/objective.py (x_t = (1 - sigma) x0
+ sigma eps, v = eps - x0, x0_pred = x_t - sigma v_pred), per latent frame:

    x0 error     e_x = x0_pred - x0 = -sigma (v_pred - v)
    noise error  e_n = eps_pred - eps = (1 - sigma) (v_pred - v)

Buffers: for each kind (x0, noise) and each of `buckets` timestep buckets (bucket of t = 1000
sigma: floor(t buckets / 1000)), a ring of at most `capacity` frames [C, H, W] (fp32, host memory),
the oldest overwritten first. Frames given clean (I2V) are neither recorded nor perturbed.

Injection, per sample, with three gates drawn from the sample's seed (probabilities
`context_probability`, `latent_probability`, `noise_probability`): every frame f of the sample
takes an error from the bucket of its own timestep (an entry chosen by a draw from the same seed;
no injection while that bucket is empty) and adds it

    to the clean context (the teacher-forcing clean stream):   x0_ctx = x0 + e_x
    to the clean latent before noising:                        x_t = (1 - sigma)(x0 + e_x) + sigma eps
    to the noise:                                              x_t = (1 - sigma) x0 + sigma (eps + e_n)

The target stays v = eps - x0 (the model learns to undo the error).

Determinism: the draws come from the sample seeds (DataStream), so they do not depend on how a
global batch is split over ranks or micro-steps. Errors are recorded during the micro-steps and
written to the buffers once per optimizer step (`commit`), gathered from all ranks and inserted in
stream order (micro-step, rank, sample): every rank holds the same buffers, equal to those of one
process running the same global batch. A checkpoint holds the buffers and their write pointers
(`state_dict`); there is no other random state, so a resumed run continues exactly.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from longlive.errors import ConfigError

if TYPE_CHECKING:
    from longlive.train.config import ErrorRecyclingConfig

log = logging.getLogger(__name__)

KINDS = ("x0", "noise")
_TARGETS = 3  # context, latent, noise
_SEED_TAG = 0xE4  # the stream of a sample's seed that error recycling draws from


class ErrorBuffers:
    """The timestep-bucketed error rings and their injection (module docstring)."""

    def __init__(self, config: ErrorRecyclingConfig, *, world_size: int = 1) -> None:
        self.config, self.world_size = config, world_size
        self.rings: dict[str, torch.Tensor | None] = {k: None for k in KINDS}  # [buckets, capacity, C, H, W]
        self.count = torch.zeros(config.buckets, dtype=torch.long)  # filled entries per bucket (same for both kinds)
        self.pointer = torch.zeros(config.buckets, dtype=torch.long)  # next entry written per bucket
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def bucket(self, sigma: torch.Tensor) -> torch.Tensor:
        """The bucket of each noise level (t = 1000 sigma), long, same shape."""
        k = self.config.buckets
        return (sigma.double() * k).floor().long().clamp(0, k - 1)

    def _draws(self, seed: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Per sample: gate uniforms [3] (context, latent, noise) and entry draws [3, F]."""
        rng = np.random.default_rng([int(seed), _SEED_TAG])
        return rng.random(_TARGETS), rng.integers(0, 2**62, size=(_TARGETS, frames))

    def inject(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, clean: torch.Tensor | None,
               seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clean context, clean latent to noise, noise), each x0 / noise plus the drawn errors.

        x0, noise [B, C, F, H, W] fp32; sigma [B, F]; clean [B, F] bool or None; seeds [B]."""
        cfg = self.config
        probs = (cfg.context_probability, cfg.latent_probability, cfg.noise_probability)
        out = [x0.clone(), x0.clone(), noise.clone()]
        buckets = self.bucket(sigma).cpu()
        frames = x0.shape[2]
        for b, seed in enumerate(seeds.tolist()):
            gates, entries = self._draws(seed, frames)
            for target, (p, source) in enumerate(zip(probs, ("x0", "x0", "noise"))):
                ring = self.rings[source]
                if gates[target] >= p or ring is None:
                    continue
                for f in range(frames):
                    k = int(buckets[b, f])
                    n = int(self.count[k])
                    if n == 0 or (clean is not None and bool(clean[b, f])):
                        continue
                    error = ring[k, int(entries[target, f]) % n].to(x0.device)
                    out[target][b, :, f] += error
        return out[0], out[1], out[2]

    def record(self, v_pred: torch.Tensor, v_target: torch.Tensor, sigma: torch.Tensor,
               clean: torch.Tensor | None) -> None:
        """Keep this micro-step's errors until `commit` (v_* [B, C, F, H, W], sigma [B, F])."""
        v_err = (v_pred.detach().float() - v_target.float())
        s = sigma.float()[:, None, :, None, None]
        keep = torch.ones_like(sigma, dtype=torch.bool) if clean is None else ~clean
        self._pending.append(((-s * v_err), ((1.0 - s) * v_err), self.bucket(sigma), keep))

    def commit(self) -> None:
        """Write the recorded errors of all ranks into the rings, in stream order (module docstring)."""
        if not self._pending:
            return
        micro = len(self._pending)
        x_err, n_err, buckets, keep = (torch.cat(column) for column in zip(*self._pending))  # [M*B, ...] each
        self._pending = []
        if self.world_size > 1:
            x_err, n_err, buckets, keep = (self._gather(t, micro) for t in (x_err, n_err, buckets, keep))
        x_err, n_err, buckets, keep = x_err.cpu(), n_err.cpu(), buckets.cpu(), keep.cpu()
        for b in range(x_err.shape[0]):
            for f in range(x_err.shape[2]):
                if keep[b, f]:
                    self._insert(int(buckets[b, f]), x_err[b, :, f], n_err[b, :, f])

    def _gather(self, local: torch.Tensor, micro: int) -> torch.Tensor:
        """All ranks' [M*B, ...] in the order (micro-step, rank, sample)."""
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local.contiguous())
        stacked = torch.stack([p.reshape(micro, -1, *local.shape[1:]) for p in parts], dim=1)  # [M, R, B, ...]
        return stacked.reshape(-1, *local.shape[1:])

    def _insert(self, k: int, x_err: torch.Tensor, n_err: torch.Tensor) -> None:
        if self.rings["x0"] is None:
            shape = (self.config.buckets, self.config.capacity, *x_err.shape)
            self.rings = {kind: torch.zeros(shape, dtype=torch.float32) for kind in KINDS}
        if self.rings["x0"].shape[2:] != x_err.shape:
            raise ConfigError(f"train.error_recycling: latent frames of shape {tuple(x_err.shape)} do not fit the "
                              f"buffers' {tuple(self.rings['x0'].shape[2:])}; one run trains one latent size")
        slot = int(self.pointer[k])
        self.rings["x0"][k, slot] = x_err
        self.rings["noise"][k, slot] = n_err
        self.pointer[k] = (slot + 1) % self.config.capacity
        self.count[k] = min(int(self.count[k]) + 1, self.config.capacity)

    def state_dict(self) -> dict:
        state = {"count": self.count.clone(), "pointer": self.pointer.clone()}
        if self.rings["x0"] is not None:
            state.update({f"ring_{kind}": self.rings[kind].clone() for kind in KINDS})
        return state

    def load_state_dict(self, state: dict, *, where: str) -> None:
        cfg = self.config
        if len(state["count"]) != cfg.buckets or ("ring_x0" in state and state["ring_x0"].shape[1] != cfg.capacity):
            raise ConfigError(f"train.error_recycling: the buffers in {where} have {len(state['count'])} buckets "
                              f"(capacity {state['ring_x0'].shape[1] if 'ring_x0' in state else '?'}); this run has "
                              f"buckets = {cfg.buckets}, capacity = {cfg.capacity}; resume with the same values")
        self.count, self.pointer = state["count"].clone(), state["pointer"].clone()
        self.rings = {kind: state[f"ring_{kind}"].clone() if f"ring_{kind}" in state else None for kind in KINDS}

    def stats(self) -> dict[str, float]:
        """Filled fraction of the buffers (for logs)."""
        return {"filled": float(self.count.sum()) / (self.config.buckets * self.config.capacity)}

