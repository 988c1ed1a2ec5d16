"""GPU checks of the real FP8 path (torch._scaled_mm, row-wise) against the emulated path on the same device.

Run on a GPU machine with compute capability >= 8.9: `python -m pytest -m gpu plugins/quant_fp8`
(CI deselects the `gpu` marker).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from longlive.quant.apply import quantize_model
from longlive_plugins.quant_fp8 import fp8
from longlive_plugins.quant_fp8.format import FP8RowwiseFormat
from longlive_plugins.quant_fp8.plugin import QuantFP8Config

pytestmark = pytest.mark.gpu


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _device() -> torch.device:
    dev = torch.device("cuda")
    ok, why = fp8.probe(dev)
    assert ok, why  # a gpu test on a GPU without FP8 fails: it never skips
    return dev


@pytest.mark.parametrize("fast_accum, tol", [(False, 2.0**-7), (True, 1e-2)])
def test_scaled_mm_matches_the_emulated_gemm(fast_accum, tol):
    dev = _device()
    torch.manual_seed(0)
    qx, sx = fp8.quantize_rows(torch.randn(300, 3072, device=dev, dtype=torch.bfloat16))  # M not a multiple of 16
    qw, sw = fp8.quantize_rows(torch.randn(14336, 3072, device=dev, dtype=torch.bfloat16) * 0.02)
    emulated = fp8.matmul_emulated(qx, sx, qw, sw, torch.float32)
    real = fp8.matmul(qx, sx, qw, sw, torch.bfloat16, path="real", fast_accum=fast_accum)
    assert real.dtype == torch.bfloat16 and torch.isfinite(real).all()
    assert _rel(real, emulated) < tol  # the same products; BF16 output rounding (2^-9 rms) and accumulation order


def test_real_linear_matches_emulated_linear_and_bf16(tiny_model):
    dev = _device()
    model = tiny_model.to(dev, torch.bfloat16)
    x = torch.randn(1, 48, 2, 8, 8, device=dev, dtype=torch.bfloat16)
    t, ctx = torch.tensor([500.0], device=dev), torch.randn(1, 16, 32, device=dev, dtype=torch.bfloat16)
    fmt = FP8RowwiseFormat(QuantFP8Config())
    real, emulated = copy.deepcopy(model), copy.deepcopy(model)
    assert quantize_model(real, fmt, role="generator", path="real", training=False).converted == 20
    quantize_model(emulated, fmt, role="generator", path="emulate", training=False)
    with torch.no_grad():
        ref, y_real, y_emu = model(x, t, ctx), real(x, t, ctx), emulated(x, t, ctx)
    assert torch.isfinite(y_real).all()
    assert _rel(y_real, y_emu) < 1e-2  # same quantized operands: only output rounding and accumulation differ
    assert _rel(y_real, ref) < 0.05  # FP8 against BF16, as on the CPU


def test_real_training_step_gives_straight_through_gradients():
    dev = _device()
    torch.manual_seed(1)
    linear = nn.Linear(256, 128, device=dev, dtype=torch.bfloat16)
    layer = FP8RowwiseFormat(QuantFP8Config()).convert(copy.deepcopy(linear), role="generator", training=True,
                                                       path="real")
    x = torch.randn(64, 256, device=dev, dtype=torch.bfloat16, requires_grad=True)
    layer(x).float().square().sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    linear(xr).float().square().sum().backward()
    assert _rel(layer.weight.grad, linear.weight.grad) < 0.1 and _rel(x.grad, xr.grad) < 0.1
