"""The NVFP4 reference on a CUDA GPU gives the CPU's bits; the emulated GEMM's CUDA branch.

Run on the GPU machine: `python -m pytest -m gpu tests/gpu` (CI deselects the `gpu` marker).
"""
from __future__ import annotations

import pytest
import torch

from longlive.quant import nvfp4

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("rule", ["static_6", "static_4", "mse", "mae", "abs_max"])
def test_quantize_on_gpu_equals_cpu(rule):
    x = torch.randn(300, 200, generator=torch.Generator().manual_seed(0)) * torch.rand(300, 1) * 5
    for block_2d in (False, True):
        cpu = nvfp4.quantize(x, scale_rule=rule, block_2d=block_2d)
        gpu = nvfp4.quantize(x.cuda(), scale_rule=rule, block_2d=block_2d)
        assert torch.equal(gpu.packed.cpu(), cpu.packed)
        assert torch.equal(gpu.scales.view(torch.uint8).cpu(), cpu.scales.view(torch.uint8))
        assert torch.equal(gpu.amax.cpu(), cpu.amax)


def test_emulated_gemm_cuda_branch_matches_float64():
    g = torch.Generator().manual_seed(1)
    a = nvfp4.quantize(torch.randn(64, 512, generator=g).cuda())
    b = nvfp4.quantize(torch.randn(48, 512, generator=g).cuda(), block_2d=True)
    out = nvfp4.emulated_gemm(a, b, out_dtype=torch.float32)
    lhs, rhs = nvfp4.block_values(a).double(), nvfp4.block_values(b).double()
    alpha = a.global_scale.double() * b.global_scale.double()
    bound = (512 * 2.0**-24 * 1.01 + 3 * 2.0**-24) * ((lhs.abs() @ rhs.abs().T) * alpha)
    assert ((out.double() - (lhs @ rhs.T) * alpha).abs() <= bound).all()
