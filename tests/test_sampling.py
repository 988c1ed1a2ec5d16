"""Flow-matching relations, Wan's UniPC schedule and solver, and the few-step sampler."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longlive.errors import ConfigError
from longlive.sampling import (
    FewStepSampler,
    FlowMatching,
    UniPCSampler,
    denoise,
    fewstep_sampler,
    unipc_sampler,
)

# ---- Flow matching ------------------------------------------------------------------


@pytest.mark.parametrize("per", ["scalar", "sample", "frame"])
def test_add_noise_x0_round_trip(per: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 5, 6, generator=g)  # [B, C, F, H, W]
    eps = torch.randn(x0.shape, generator=g)
    sigma = {"scalar": 0.3, "sample": torch.tensor([0.2, 0.9]),
             "frame": torch.rand(2, 4, generator=g)}[per]
    x_t = FlowMatching.add_noise(x0, eps, sigma)
    for b in range(2):  # against the definition, sample by sample and frame by frame
        for f in range(4):
            s = sigma if per == "scalar" else sigma[b] if per == "sample" else sigma[b, f]
            assert torch.allclose(x_t[b, :, f], (1 - s) * x0[b, :, f] + s * eps[b, :, f], atol=1e-6)
    v = FlowMatching.velocity_target(x0, eps)
    assert torch.allclose(FlowMatching.x0_from_velocity(x_t, v, sigma), x0, atol=1e-5)


def test_shift_and_timestep() -> None:
    assert FlowMatching.shift_sigma(0.0, 5.0) == 0.0 and FlowMatching.shift_sigma(1.0, 5.0) == 1.0
    assert FlowMatching.shift_sigma(0.5, 5.0) == pytest.approx(2.5 / 3.0)
    assert FlowMatching.timestep(0.625) == 625.0
    with pytest.raises(ValueError, match="sigma must be"):
        FlowMatching.add_noise(torch.zeros(2, 1, 3, 1, 1), torch.zeros(2, 1, 3, 1, 1), torch.ones(3))


# ---- UniPC schedule -----------------------------------------------------------------


def _wan_timesteps(n: int, shift: float) -> list[int]:
    """Wan's set_timesteps, from its formula: sigma_max = float32(0.999), linspace, shift, int()."""
    sigma_max = float(np.float32(0.999))
    out = []
    for i in range(n):
        s = sigma_max * (1 - i / n)
        out.append(int(1000 * shift * s / (1 + (shift - 1) * s)))
    return out


@pytest.mark.parametrize("n", [4, 2, 50])
def test_unipc_timesteps(n: int) -> None:
    sampler = UniPCSampler(n, shift=5.0)
    assert list(sampler.timesteps) == _wan_timesteps(n, 5.0)
    assert len(sampler.sigmas) == n + 1 and sampler.sigmas[-1] == 0.0
    assert sampler.sigmas[0] == pytest.approx(4.995 / 4.996, abs=1e-7)  # shift 5 of sigma_max 0.999


def test_unipc_timesteps_reference_values() -> None:
    assert UniPCSampler(4).timesteps == (999, 937, 833, 624)
    assert UniPCSampler(2).timesteps == (999, 833)
    t50 = UniPCSampler(50).timesteps
    assert t50[:5] == (999, 995, 991, 987, 982) and t50[-2:] == (172, 92)


# ---- UniPC trajectory against an independent float64 numpy implementation -----------


def _phi(k: int, z: float) -> float:
    """phi_0(z) = e^z, phi_{k+1}(z) = (phi_k(z) - 1/k!) / z (UniPC paper, sec. 3)."""
    p = math.exp(z)
    for j in range(k):
        p = (p - 1 / math.factorial(j)) / z
    return p


def _uni_update(x, m_hist, m_new, sig, src, dst, order):
    """One UniP (m_new None) or UniC update, data prediction, B(h) = e^h - 1 (paper eq. 5-8).

    m_hist: x0 estimates oldest first, the newest at step `src`. Wan/diffusers take rho = 0.5 for
    the order-2 predictor and the order-1 corrector instead of solving the system.
    """
    lam = lambda s: math.log((1 - s) / s)  # noqa: E731
    s0, st = sig[src], sig[dst]
    m0 = m_hist[-1]
    if st == 0.0:
        return m0.copy()
    h = lam(st) - lam(s0)
    z = -h
    bh = math.expm1(z)
    rks = [(lam(sig[src - i]) - lam(s0)) / h for i in range(1, order)]
    ds = [(m_hist[-1 - i] - m0) / r for i, r in enumerate(rks, start=1)]
    r_all = rks + [1.0]
    R = np.array([[r ** i for r in r_all] for i in range(order)])
    b = np.array([z * _phi(i + 1, z) * math.factorial(i) / bh for i in range(1, order + 1)])
    base = st / s0 * x - (1 - st) * math.expm1(z) * m0
    if m_new is None:
        rho = [] if order == 1 else [0.5] if order == 2 else list(np.linalg.solve(R[:-1, :-1], b[:-1]))
        return base - (1 - st) * bh * sum((r * d for r, d in zip(rho, ds)), np.zeros_like(x))
    rho = [0.5] if order == 1 else list(np.linalg.solve(R, b))
    res = sum((r * d for r, d in zip(rho[:-1], ds)), np.zeros_like(x)) + rho[-1] * (m_new - m0)
    return base - (1 - st) * bh * res


def _reference_unipc(x, fn, sig, ts, order):
    n = len(ts)
    hist, prev, prev_order, out = [], None, 0, []
    for k in range(n):
        m = x - sig[k] * fn(x, ts[k])
        if k > 0:
            x = _uni_update(prev, hist, m, sig, k - 1, k, prev_order)
        hist.append(m)
        p = min(order, n - k, k + 1)
        prev, prev_order = x, p
        x = _uni_update(x, hist, None, sig, k, k + 1, p)
        out.append(x)
    return out


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_trajectory_matches_numpy_reference(order: int) -> None:
    rng = np.random.default_rng(0)
    shape = (2, 3, 2, 4, 4)
    a, c = rng.uniform(-0.8, 0.8, shape), rng.normal(size=shape)
    fn_np = lambda x, t: a * x + c * (t / 1000.0)  # noqa: E731  analytic "model": v = a x + c t
    x_T = rng.normal(size=shape)
    sampler = UniPCSampler(6, shift=5.0, order=order)
    ref = _reference_unipc(x_T.copy(), fn_np, sampler.sigmas, sampler.timesteps, order)

    a_t, c_t = torch.from_numpy(a), torch.from_numpy(c)
    traj = sampler.start(torch.from_numpy(x_T))
    for k in range(6):
        traj.step(a_t * traj.sample + c_t * (traj.timestep / 1000.0))
        assert np.abs(traj.sample.numpy() - ref[k]).max() < 1e-10, k  # float64 throughout
    assert traj.done and torch.equal(traj.x0, traj.sample)  # final sigma 0: the sample is x0
    with pytest.raises(RuntimeError, match="already finished"):
        traj.step(torch.zeros(shape, dtype=torch.float64))


def test_unipc_matches_diffusers_given_wan_sigmas() -> None:
    """diffusers' UniPC runs the same solver; fed Wan's sigmas it must follow our trajectory."""
    from diffusers import UniPCMultistepScheduler

    sampler = UniPCSampler(8, shift=5.0)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
                                    solver_order=2, solver_type="bh2", lower_order_final=True,
                                    final_sigmas_type="zero")
    sched.set_timesteps(8)
    sched.sigmas = torch.tensor(sampler.sigmas, dtype=torch.float64)
    sched.timesteps = torch.tensor(sampler.timesteps, dtype=torch.int64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 2, 3, 3, generator=g, dtype=torch.float64)
    fn = lambda x, t: 0.3 * x + torch.sin(x) * t / 1000 - 0.2  # noqa: E731
    ours = denoise(sampler, fn, x.clone())
    for t in sched.timesteps:
        x = sched.step(fn(x, float(t)), t, x).prev_sample
    assert (ours - x).abs().max() < 1e-10


# ---- Few-step sampler ---------------------------------------------------------------


def test_fewstep_warped_timesteps() -> None:
    s = FewStepSampler()
    assert s.timesteps == pytest.approx([1000.0, 937.5, 2500.0 / 3.0, 625.0])
    assert s.sigmas == pytest.approx([1.0, 0.9375, 2.5 / 3.0, 0.625, 0.0])
    assert FewStepSampler([1000, 757, 522], warp=False).timesteps == (1000.0, 757.0, 522.0)
    with pytest.raises(ConfigError, match="strictly decreasing"):
        FewStepSampler([1000, 750, 500, 250, 0])


def test_fewstep_closed_form() -> None:
    """A model that predicts x0 exactly: every re-noise is (1 - s) x0 + s eps with the same generator."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(1, 4, 2, 3, 3, generator=g)  # [B, C, F, H, W]
    x_T = torch.randn(target.shape, generator=g)
    sampler = FewStepSampler()
    traj = sampler.start(x_T, generator=torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)
    while not traj.done:
        sigma = traj.sigma
        out = traj.step((traj.sample - target) / sigma)  # v such that x - sigma v = target
        assert torch.allclose(traj.x0, target, atol=1e-5)
        if not traj.done:
            eps = torch.randn(target.shape, generator=replay)
            assert torch.allclose(out, (1 - traj.sigma) * traj.x0 + traj.sigma * eps, atol=1e-6)
    assert torch.equal(traj.sample, traj.x0)


# ---- Factory ------------------------------------------------------------------------


def test_sampler_builders() -> None:
    assert unipc_sampler(4).timesteps == (999, 937, 833, 624)
    assert fewstep_sampler(4).timesteps == FewStepSampler().timesteps
    assert fewstep_sampler([1000, 750]).timesteps == pytest.approx([1000.0, 937.5])
    with pytest.raises(ConfigError, match="number of steps"):
        unipc_sampler([1000, 750])
