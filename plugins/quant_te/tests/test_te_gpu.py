"""Blackwell checks of the real path (te.Linear under te.autocast) against the emulated path on the same GPU.

Never run here: it needs a GPU of compute capability >= 10.0 and TransformerEngine >= 2.20 (the
`te` extra). Run it there with `python -m pytest -m "gpu and sm100" plugins/quant_te` (CI deselects
`gpu`). TransformerEngine is the one dependency a test may skip on (it cannot be installed without
CUDA); a Blackwell machine with TE whose probe fails is a failure, not a skip.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from longlive_plugins.quant_te.format import TENVFP4Format
from longlive_plugins.quant_te.plugin import QuantTEConfig

pytestmark = [pytest.mark.gpu, pytest.mark.sm100]


@pytest.fixture(autouse=True)
def transformer_engine():
    # Inside a fixture, so the CPU suite (which deselects `gpu`) never reaches it.
    return pytest.importorskip("transformer_engine.pytorch", reason="TransformerEngine is installed only on CUDA machines")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _linear(k: int, n: int) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        linear.weight.normal_(0.0, k**-0.5)
    return linear


@pytest.mark.parametrize("table", [{}, {"disable_2d_quantization": True}], ids=["2d", "1d"])
def test_real_forward_matches_the_emulation(table):
    fmt = TENVFP4Format(QuantTEConfig(**table))
    ok, why = fmt.probe(torch.device("cuda"))
    assert ok, why
    linear = _linear(1024, 512)
    real = fmt.convert(copy.deepcopy(linear), role="generator", training=False, path="real")
    emulated = fmt.convert(copy.deepcopy(linear), role="generator", training=False, path="emulate")
    x = torch.randn(256, 1024, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad(), fmt.forward_context():
        y_real = real(x)
    with torch.no_grad():
        y_emulated = emulated(x)
    exact = x.double() @ linear.weight.double().t() + linear.bias.double()
    # Same quantized operands; the GEMMs differ by accumulation order and the BF16 output rounding.
    assert _rel(y_real, y_emulated) < 0.01
    assert abs(_rel(y_real, exact) - _rel(y_emulated, exact)) < 0.01


def test_real_training_step_is_finite_and_close_to_the_emulation():
    fmt = TENVFP4Format(QuantTEConfig())
    linear = _linear(512, 256)
    real = fmt.convert(copy.deepcopy(linear), role="generator", training=True, path="real")
    x = torch.randn(128, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(128, 256, device="cuda", dtype=torch.bfloat16)
    with fmt.forward_context():
        y = real(x)
    y.backward(dy)
    dw_exact = dy.double().t() @ x.detach().double()
    assert torch.isfinite(real.weight.grad).all() and torch.isfinite(x.grad).all()
    assert _rel(real.weight.grad, dw_exact) < fmt.expected_error
