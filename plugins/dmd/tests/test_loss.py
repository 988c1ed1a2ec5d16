"""The DMD loss against its formula, computed independently (element by element, per chunk)."""
from __future__ import annotations

import torch

from longlive_plugins.dmd.loss import dmd_gradient, dmd_loss, draw_sigmas, guided_real


def _reference_gradient(x, fake, real, fpc):
    """(fake - real) / mean|x - real| over each chunk of each sample, with explicit loops."""
    out = torch.empty_like(x, dtype=torch.float64)
    for b in range(x.shape[0]):
        for start in range(0, x.shape[2], fpc):
            sl = (b, slice(None), slice(start, start + fpc))
            norm = (x[sl].double() - real[sl].double()).abs().sum() / x[sl].numel()
            out[sl] = (fake[sl].double() - real[sl].double()) / norm
    return out


def test_gradient_of_a_tiny_generator_equals_the_formula():
    """A tiny linear 'generator' x = W z: dL/dW from autograd equals J^T grad / N."""
    g = torch.Generator().manual_seed(0)
    b, c, f, h, w, fpc = 2, 3, 4, 2, 2, 2
    weight = torch.randn(c, 5, generator=g, requires_grad=True)
    z = torch.randn(b, 5, f, h, w, generator=g)
    x = torch.einsum("ck,bkfhw->bcfhw", weight, z)
    fake, real = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    grad = dmd_gradient(x.detach(), fake, real, fpc)
    assert torch.allclose(grad, _reference_gradient(x.detach(), fake, real, fpc), rtol=1e-12, atol=0)
    loss = dmd_loss(x, grad)
    assert loss.dtype == torch.float64
    (got,) = torch.autograd.grad(loss, weight)
    expected = torch.einsum("bcfhw,bkfhw->ck", _reference_gradient(x.detach(), fake, real, fpc), z.double()) / x.numel()
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-7)  # W, x are float32
    # the loss value: 0.5 mean(grad^2)
    assert torch.allclose(loss, 0.5 * (grad ** 2).mean())


def test_kept_frames_only():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 2, 2, generator=g, requires_grad=True)
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    keep = torch.ones(2, 4, dtype=torch.bool)
    keep[:, 0] = False  # I2V: the image frame carries no loss
    (got,) = torch.autograd.grad(dmd_loss(x, grad, keep), x)
    assert torch.all(got[:, :, 0] == 0)
    assert torch.allclose(got[:, :, 1:].double(), grad[:, :, 1:] / (2 * 3 * 3 * 2 * 2))


def test_guidance_and_timesteps():
    cond, uncond = torch.tensor([2.0]), torch.tensor([1.0])
    assert guided_real(cond, uncond, 3.0).item() == 5.0  # cond + 3 (cond - uncond)
    assert guided_real(cond, None, 0.0) is cond
    gens = [torch.Generator().manual_seed(s) for s in range(64)]
    sigma = draw_sigmas(64, 4, groups=2, shift=5.0, t_min=20, t_max=980, generators=gens, device=torch.device("cpu"))
    assert sigma.shape == (64, 4) and sigma.min() >= 0.02 - 1e-7 and sigma.max() <= 0.98 + 1e-7
    assert torch.equal(sigma[:, 0], sigma[:, 1]) and not torch.equal(sigma[:, 1], sigma[:, 2])  # per chunk
    assert sigma.mean() > 0.6  # shift 5 pushes towards the noisy end
