"""Flow matching and the two samplers that integrate it: Wan's UniPC and the few-step sampler.

Flow matching (rectified flow), as Wan2.2 trains it. For a clean latent x0, noise eps and a noise
level sigma in [0, 1]:

    x_t = (1 - sigma) * x0 + sigma * eps       (add_noise)
    v   = eps - x0                             (velocity_target: what the DiT predicts)
    x0  = x_t - sigma * v                      (x0_from_velocity)
    t   = 1000 * sigma                         (the timestep the DiT is fed, on a 0..1000 scale)

The shift maps a uniform grid of noise levels towards the noisy end:
sigma' = shift * sigma / (1 + (shift - 1) * sigma). Latents are [B, C, F, H, W]; a sigma is a
Python float, a 0-d tensor, a [B] tensor (one level per sample) or a [B, F] tensor (one per frame).

Sampling is split into a sampler (the schedule, immutable, shared by every chunk) and a
trajectory (the solver state of one denoising run). A chunk loop starts a fresh trajectory per
chunk, as LongLive 2.0 builds a fresh scheduler per chunk:

    traj = sampler.start(x_T, generator=g)     # x_T: [B, C, F, H, W] noise
    while not traj.done:
        v = model(traj.sample, traj.timestep)  # feed timestep t (float, 0..1000); get velocity
        traj.step(v)                           # returns the next sample to feed
    latents = traj.x0                          # the final clean estimate

`step` does only tensor arithmetic with Python-float coefficients that were computed when the
sampler was built: no .item(), no host sync, and autograd flows through it (training rollouts).

UniPC (Zhao et al., "UniPC", arXiv 2302.04867) in Wan's FlowUniPCMultistepScheduler setting:
data prediction (predict_x0), solver_order 2, B(h) = expm1(h) ("bh2"), lower_order_final and a
final sigma of 0. With alpha = 1 - sigma and lambda = log(alpha / sigma), step k -> k+1 has
h = lambda_{k+1} - lambda_k and, with m_j the x0 estimate at step j (newest m_k),

    UniP:  x_{k+1} = (sigma_{k+1}/sigma_k) x_k - alpha_{k+1} expm1(-h) m_k
                     - alpha_{k+1} B(-h) sum_i rho_i (m_{k-i} - m_k) / r_i,
           r_i = (lambda_{k-i} - lambda_k) / h

and the corrector UniC re-does the previous step once m_{k+1} is known (paper eq. 8 / Alg. 2),
adding the term rho_c (m_{k+1} - m_k). The rho come from the paper's linear system R rho = b
(Wan and diffusers use the constant 0.5 for the order-2 predictor and the order-1 corrector).
Each update is linear in x and the m_j, so we precompute its coefficients per step.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Protocol, Sequence

import attrs
import numpy as np
import torch

from longlive.errors import ConfigError

log = logging.getLogger(__name__)

TRAIN_TIMESTEPS = 1000  # Wan's num_train_timesteps: t = 1000 * sigma


class FlowMatching:
    """Namespace of the rectified-flow relations (module docstring); all pure functions."""

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """x_t = (1 - sigma) x0 + sigma noise; x0, noise: [B, C, F, H, W]."""
        s = _broadcast_sigma(sigma, x0)
        return (1 - s) * x0 + s * noise

    @staticmethod
    def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The flow the DiT is trained to predict: v = noise - x0."""
        return noise - x0

    @staticmethod
    def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """x0 = x_t - sigma v, computed in the dtype of x_t."""
        return x_t - _broadcast_sigma(sigma, x_t) * v.to(x_t.dtype)

    @staticmethod
    def shift_sigma(sigma: float | torch.Tensor, shift: float) -> float | torch.Tensor:
        """sigma' = shift sigma / (1 + (shift - 1) sigma); maps 0 -> 0 and 1 -> 1."""
        return shift * sigma / (1 + (shift - 1) * sigma)

    @staticmethod
    def timestep(sigma: float | torch.Tensor) -> float | torch.Tensor:
        """The DiT's timestep input for a noise level: t = 1000 sigma."""
        return sigma * TRAIN_TIMESTEPS


def _broadcast_sigma(sigma: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """Shape a per-sample [B] or per-frame [B, F] sigma to broadcast against x [B, C, F, H, W]."""
    if not isinstance(sigma, torch.Tensor) or sigma.ndim == 0:
        return sigma
    if x.ndim != 5:
        raise ValueError(f"latents must be [B, C, F, H, W] for a per-sample sigma; got shape {tuple(x.shape)}")
    b, _, f = x.shape[:3]
    if sigma.shape == (b,):
        return sigma.to(x.dtype).view(b, 1, 1, 1, 1)
    if sigma.shape == (b, f):
        return sigma.to(x.dtype).view(b, 1, f, 1, 1)
    raise ValueError(f"sigma must be a float, [B]={b} or [B, F]=({b}, {f}); got shape {tuple(sigma.shape)}")


# ---- Trajectories -------------------------------------------------------------------


class Trajectory:
    """The solver state of one denoising run (one chunk); created by `Sampler.start`.

    Holds the schedule (`timesteps`, `sigmas`), the step index and the sample to feed next.
    Subclasses implement `step`.
    """

    def __init__(self, timesteps: tuple[float, ...], sigmas: tuple[float, ...], x_T: torch.Tensor) -> None:
        self._timesteps, self._sigmas = timesteps, sigmas
        self._index = 0
        self._sample = x_T  # [B, C, F, H, W]
        self._x0: torch.Tensor | None = None

    @property
    def index(self) -> int:
        return self._index

    @property
    def sample(self) -> torch.Tensor:
        """[B, C, F, H, W], the latents to feed the model next (the final x0 once done)."""
        return self._sample

    @property
    def timestep(self) -> float:
        """The model's timestep input for `sample`, on the 0..1000 scale."""
        return self._timesteps[self._index]

    @property
    def sigma(self) -> float:
        """The noise level of `sample`."""
        return self._sigmas[self._index]

    @property
    def x0(self) -> torch.Tensor | None:
        """The latest clean estimate; None before the first step."""
        return self._x0

    @property
    def done(self) -> bool:
        return self._index == len(self._timesteps)

    def step(self, velocity: torch.Tensor) -> torch.Tensor:
        """Take the model's velocity at `sample`; return (and keep) the next sample."""
        raise NotImplementedError

    def _check_not_done(self) -> None:
        if self.done:
            raise RuntimeError(f"trajectory already finished its {len(self._timesteps)} steps; "
                               "start a new one with sampler.start")


class Sampler(Protocol):
    """A denoising schedule; immutable, so one sampler serves every chunk and every rank."""

    timesteps: tuple[float, ...]  # model inputs, one per step, on the 0..1000 scale
    sigmas: tuple[float, ...]  # noise level of the sample at each step, plus the final one (0)

    def start(self, x_T: torch.Tensor, generator: torch.Generator | None = None) -> Trajectory: ...


def denoise(sampler: Sampler, velocity_fn: Callable[[torch.Tensor, float], torch.Tensor],
           x_T: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Run a whole trajectory: velocity_fn(x [B, C, F, H, W], t) -> v; returns the final x0."""
    traj = sampler.start(x_T, generator=generator)
    while not traj.done:
        traj.step(velocity_fn(traj.sample, traj.timestep))
    return traj.x0


# ---- UniPC (Wan's FlowUniPCMultistepScheduler) --------------------------------------


@attrs.frozen
class _Linear:
    """x_new = c_x * x + sum_j c_m[j] * m[j], with m ordered newest first."""

    c_x: float
    c_m: tuple[float, ...]

    def apply(self, x: torch.Tensor, ms: Sequence[torch.Tensor]) -> torch.Tensor:
        assert len(ms) >= len(self.c_m), (len(ms), self.c_m)
        terms = [c * m for c, m in zip(self.c_m, ms)]
        out = terms[0] if self.c_x == 0.0 else x * self.c_x + terms[0]  # c_x = 0: exactly m[0]
        for term in terms[1:]:
            out = out + term
        return out


@attrs.frozen
class _UniPCStep:
    predictor: _Linear  # from the (corrected) x_k and m_k.. to x_{k+1}
    corrector: _Linear | None  # re-does step k-1 -> k once m_k is known; None at k = 0


def wan_unipc_sigmas(steps: int, shift: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Wan's FlowUniPCMultistepScheduler.set_timesteps: (timesteps [steps], sigmas [steps + 1]).

    sigma_max is Wan's training sigma 0.999 stored in float32; the grid linspace(sigma_max, 0,
    steps + 1)[:-1] is shifted in float64, timesteps are int64(1000 sigma) (truncation), and the
    sigmas are stored in float32 with a final 0 appended.
    """
    sigma_max = float(np.float32(1.0 - 1.0 / TRAIN_TIMESTEPS))
    grid = np.linspace(sigma_max, 0.0, steps + 1)[:-1]
    shifted = shift * grid / (1 + (shift - 1) * grid)
    timesteps = tuple(float(t) for t in (shifted * TRAIN_TIMESTEPS).astype(np.int64))
    sigmas = tuple(float(s) for s in np.append(shifted, 0.0).astype(np.float32))
    return timesteps, sigmas


def _lam(sigma: float) -> float:
    return math.log(1.0 - sigma) - math.log(sigma)


def _unipc_b(hh: float, order: int) -> list[float]:
    """The right-hand side b of R rho = b for B(h) = expm1(h) ("bh2"); UniPC paper Alg. 2."""
    h_phi_k = math.expm1(hh) / hh - 1.0
    b_h = math.expm1(hh)
    b, factorial = [], 1
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return b


def _unipc_update(sigmas: Sequence[float], src: int, dst: int, order: int, corrector: bool) -> _Linear:
    """Coefficients of the UniP (corrector=False) or UniC update from step `src` to step `dst`.

    The history m is newest first: m[0] is the x0 estimate at `src`, m[i] the one at src - i.
    For UniC the new estimate at `dst` comes first, then the history at src, src - 1, ...
    """
    s0, st = sigmas[src], sigmas[dst]
    if st == 0.0:  # lambda_t = +inf: expm1(-h) = -1 and B = -1, so x_dst = m[0] exactly
        assert order == 1 and not corrector, "a final sigma of 0 needs order 1 (lower_order_final)"
        return _Linear(0.0, (1.0,))
    a_t, lam_s0 = 1.0 - st, _lam(s0)
    h = _lam(st) - lam_s0
    hh = -h  # data prediction integrates in -h
    phi1, b_h = math.expm1(hh), math.expm1(hh)
    rks = [(_lam(sigmas[src - i]) - lam_s0) / h for i in range(1, order)]
    r_mat = np.array([[r ** i for r in rks + [1.0]] for i in range(order)])
    b = np.array(_unipc_b(hh, order))
    if corrector:
        rhos = [0.5] if order == 1 else list(np.linalg.solve(r_mat, b))
        rho_d, rho_new = rhos[:-1], rhos[-1]
    else:
        rho_d = [] if order == 1 else [0.5] if order == 2 else list(np.linalg.solve(r_mat[:-1, :-1], b[:-1]))
        rho_new = 0.0
    # x = (st/s0) x - a_t phi1 m0 - a_t B (sum_i rho_i (m_i - m0) / r_i + rho_new (m_new - m0))
    c_m0 = -a_t * phi1 + a_t * b_h * (sum(r / k for r, k in zip(rho_d, rks)) + rho_new)
    c_hist = [-a_t * b_h * r / k for r, k in zip(rho_d, rks)]
    if corrector:
        return _Linear(st / s0, (-a_t * b_h * rho_new, c_m0, *c_hist))
    return _Linear(st / s0, (c_m0, *c_hist))


class UniPCSampler:
    """Wan2.2's FlowUniPCMultistepScheduler (flow prediction, bh2, order 2) as a stateless schedule.

    The model is fed `timesteps[k]` (int-valued floats, 0..1000, e.g. [999, 937, 833, 624] for 4
    steps at shift 5) and returns the velocity v = eps - x0 at `sample`. The trajectory keeps the
    dtype of x_T, as Wan's scheduler keeps the latents' dtype.
    """

    def __init__(self, steps: int, shift: float = 5.0, order: int = 2) -> None:
        if steps < 1:
            raise ConfigError(f"sampler.steps: UniPC needs at least 1 step; got {steps}")
        if shift <= 0:
            raise ConfigError(f"sampler.shift must be > 0; got {shift}")
        if order < 1:
            raise ConfigError(f"sampler.order must be >= 1; got {order}")
        self.steps, self.shift, self.order = steps, shift, order
        self.timesteps, self.sigmas = wan_unipc_sigmas(steps, shift)
        plan = []
        for k in range(steps):
            this_order = min(order, steps - k, k + 1)  # warm-up and lower_order_final
            prev_order = min(order, steps - k + 1, k)
            plan.append(_UniPCStep(
                predictor=_unipc_update(self.sigmas, k, k + 1, this_order, corrector=False),
                corrector=_unipc_update(self.sigmas, k - 1, k, prev_order, corrector=True) if k else None,
            ))
        self._plan = tuple(plan)
        log.debug("UniPC: %d steps, shift %g, order %d, timesteps %s", steps, shift, order, self.timesteps)

    def __repr__(self) -> str:
        return f"UniPCSampler(steps={self.steps}, shift={self.shift}, order={self.order})"

    def start(self, x_T: torch.Tensor, generator: torch.Generator | None = None) -> UniPCTrajectory:
        """Begin a trajectory at pure noise x_T [B, C, F, H, W]; UniPC draws no noise (generator unused)."""
        return UniPCTrajectory(self, x_T)


class UniPCTrajectory(Trajectory):
    """Solver state of one UniPC run: the sample before the last predictor and the x0 history."""

    def __init__(self, sampler: UniPCSampler, x_T: torch.Tensor) -> None:
        super().__init__(sampler.timesteps, sampler.sigmas, x_T)
        self._sampler = sampler
        self._last_sample: torch.Tensor | None = None  # the corrector's starting point
        self._history: list[torch.Tensor] = []  # x0 estimates, newest first, at most `order`

    def step(self, velocity: torch.Tensor) -> torch.Tensor:
        """Take the model's velocity at `sample`; return (and keep) the next sample.

        After the last step the returned sample is the final x0 (sigma 0).
        """
        self._check_not_done()
        plan = self._sampler._plan[self._index]
        x = self._sample
        m = FlowMatching.x0_from_velocity(x, velocity, self.sigma)  # x0 estimate at this step
        if plan.corrector is not None:
            x = plan.corrector.apply(self._last_sample, [m, *self._history])
        self._history = [m, *self._history][: self._sampler.order]
        self._x0 = m
        self._last_sample = x
        self._sample = plan.predictor.apply(x, self._history)
        self._index += 1
        return self._sample


# ---- Few-step x0-predict / re-noise (Self-Forcing, CausVid) ------------------------


def warp_timesteps(timesteps: Sequence[float], shift: float) -> tuple[float, ...]:
    """Self-Forcing's `warp_denoising_step`: t -> 1000 * shift_sigma(t / 1000) on the 1000-point grid.

    Upstream indexes the shifted training grid at 1000 - t, so t must be an integer in (0, 1000].
    """
    out = []
    for t in timesteps:
        if float(t) != int(t) or not 0 < t <= TRAIN_TIMESTEPS:
            raise ConfigError(f"sampler.steps: warped timesteps must be integers in (0, {TRAIN_TIMESTEPS}]; "
                              f"got {t}; use integer steps or set warp = false")
        out.append(TRAIN_TIMESTEPS * FlowMatching.shift_sigma(t / TRAIN_TIMESTEPS, shift))
    return tuple(out)


class FewStepSampler:
    """Few-step sampler of a distilled generator: predict x0, re-noise to the next level with fresh noise.

    Step k feeds `timesteps[k]` and takes the velocity v; x0 = x - sigma_k v (computed in at
    least float32, as Self-Forcing converts in float64); if a step follows, the next sample is
    (1 - sigma_{k+1}) x0 + sigma_{k+1} eps with eps ~ N(0, I) drawn from the trajectory's
    generator. With warp, the list is mapped onto the shifted grid ([1000, 750, 500, 250] at
    shift 5 -> [1000, 937.5, 833.33, 625]); without it, the list is used as given and shift is
    unused. sigma_k = timesteps[k] / 1000.
    """

    def __init__(self, timesteps: Sequence[float] = (1000, 750, 500, 250), shift: float = 5.0,
                 warp: bool = True) -> None:
        if not timesteps:
            raise ConfigError("sampler.steps: the few-step list is empty; give e.g. [1000, 750, 500, 250]")
        if any(a <= b for a, b in zip(timesteps, timesteps[1:])) or timesteps[-1] <= 0:
            raise ConfigError(f"sampler.steps must be strictly decreasing and > 0 (no trailing 0); "
                              f"got {list(timesteps)}")
        if shift <= 0:
            raise ConfigError(f"sampler.shift must be > 0; got {shift}")
        self.shift, self.warp = shift, warp
        self.timesteps = warp_timesteps(timesteps, shift) if warp else tuple(float(t) for t in timesteps)
        if self.timesteps[0] > TRAIN_TIMESTEPS:
            raise ConfigError(f"sampler.steps: timesteps must be <= {TRAIN_TIMESTEPS}; got {list(timesteps)}")
        self.sigmas = tuple(t / TRAIN_TIMESTEPS for t in self.timesteps) + (0.0,)

    def __repr__(self) -> str:
        return f"FewStepSampler(timesteps={list(self.timesteps)}, shift={self.shift}, warp={self.warp})"

    def start(self, x_T: torch.Tensor, generator: torch.Generator | None = None) -> FewStepTrajectory:
        """Begin at x_T [B, C, F, H, W]; `generator` (on x_T's device) draws the re-noising noise."""
        return FewStepTrajectory(self, x_T, generator)


class FewStepTrajectory(Trajectory):
    """Solver state of one few-step run: step index, sample and the generator of the fresh noise."""

    def __init__(self, sampler: FewStepSampler, x_T: torch.Tensor, generator: torch.Generator | None) -> None:
        super().__init__(sampler.timesteps, sampler.sigmas, x_T)
        self._generator = generator

    def step(self, velocity: torch.Tensor) -> torch.Tensor:
        """Take the velocity at `sample`; return the re-noised next sample, or x0 after the last step."""
        self._check_not_done()
        x = self._sample
        wide = torch.promote_types(x.dtype, torch.float32)
        x0 = FlowMatching.x0_from_velocity(x.to(wide), velocity.to(wide), self.sigma).to(x.dtype)
        self._x0 = x0
        self._index += 1
        if self.done:
            self._sample = x0
        else:
            noise = torch.randn(x0.shape, generator=self._generator, device=x0.device, dtype=x0.dtype)
            self._sample = FlowMatching.add_noise(x0.to(wide), noise.to(wide), self.sigma).to(x.dtype)
        return self._sample


# ---- Builders (the sampler components of the core plugin call these) -----------------------


def unipc_sampler(steps: int, shift: float = 5.0, *, order: int = 2) -> UniPCSampler:
    """UniPC with `steps` steps (the [sampler] table's int)."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ConfigError(f"sampler.steps: UniPC takes a number of steps (int); got {steps!r}")
    return UniPCSampler(steps, shift=shift, order=order)


def fewstep_sampler(steps: int | Sequence[float], shift: float = 5.0, *, warp: bool = True) -> FewStepSampler:
    """`steps` is the timestep list, or an int n for the evenly spaced list [1000, 1000 - 1000/n, ...]
    (4 -> [1000, 750, 500, 250])."""
    if isinstance(steps, int) and not isinstance(steps, bool):
        if steps < 1:
            raise ConfigError(f"sampler.steps must be >= 1; got {steps}")
        steps = [TRAIN_TIMESTEPS * (steps - k) // steps for k in range(steps)]
    return FewStepSampler(tuple(steps), shift=shift, warp=warp)
