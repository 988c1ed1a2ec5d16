"""NVFP4Linear and the "fouroversix" format: W4A4 forward, training gradients, refresh, casts, the 5B build."""
from __future__ import annotations

import copy

import fouroversix  # noqa: F401  (required: a missing fouroversix fails, never skips)
import pytest
import torch
from fouroversix import MatmulBackend, QuantizationConfig, fp4_matmul
from torch import nn

from longlive.errors import ConfigError
from longlive.model.dit import WanDiT
from longlive.model.presets import dit_preset
from longlive.quant.apply import quantize_model, select_path
from longlive.quant.format import QuantFormat, cast_model, quantized_modules, refresh_model
from longlive_plugins.quant_4o6 import backend
from longlive_plugins.quant_4o6.format import FourOverSixFormat
from longlive_plugins.quant_4o6.linear import NVFP4Linear
from longlive_plugins.quant_4o6.plugin import Quant4o6Config


def _fmt(**config) -> FourOverSixFormat:
    return FourOverSixFormat(Quant4o6Config(**config))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_the_format_satisfies_the_protocol():
    assert isinstance(_fmt(), QuantFormat) and _fmt().block_size == 16


@pytest.mark.parametrize("rule", ["static_6", "mse"])
def test_inference_forward_is_w4a4_through_fouroversix(rule):
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    x = torch.randn(2, 50, 64)
    layer = _fmt(weight_scale_rule=rule, activation_scale_rule=rule).convert(linear, role="generator",
                                                                            training=False, path="emulate")
    assert layer.materialized and layer.weight is None
    with torch.no_grad():
        out = layer(x)
    expected = fp4_matmul(x.reshape(-1, 64), linear.weight.detach(), backend=MatmulBackend.pytorch,
                          input_config=QuantizationConfig(backend="pytorch", scale_rule=rule),
                          other_config=QuantizationConfig(backend="pytorch", scale_rule=rule),
                          out_dtype=fouroversix.DataType.float32).reshape(2, 50, 96) + linear.bias
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert 0.05 < _rel(out, linear(x)) < 0.2  # W4A4 on N(0, 1) activations: ~sqrt(2 x 0.008)


def test_training_gradients_are_within_the_predicted_band():
    """Relative errors of NVFP4 GEMMs with two quantized operands ~ sqrt(e_a + e_b), e ~ 0.008-0.03
    (nvfp4.md §5; 2D weight tiles and stochastic rounding are at the high end): 0.1 to 0.3."""
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    x = torch.randn(4, 64, 128, requires_grad=True)
    dy = torch.randn(4, 64, 64)
    linear(x).backward(dy)
    ref = (x.grad.clone(), linear.weight.grad.clone(), linear.bias.grad.clone())
    x.grad = None
    layer = _fmt().convert(linear, role="generator", training=True, path="emulate")
    assert not layer.materialized and layer.weight.requires_grad
    out = layer(x)
    out.backward(dy)
    for got, want, name in ((x.grad, ref[0], "dgrad"), (layer.weight.grad, ref[1], "wgrad")):
        assert torch.isfinite(got).all()
        assert 0.05 < _rel(got, want) < 0.3, (name, _rel(got, want))
    torch.testing.assert_close(layer.bias.grad, ref[2])  # the bias gradient stays exact
    assert 0.05 < _rel(out, linear(x)) < 0.2


def test_frozen_base_gets_no_weight_gradient_but_passes_input_gradients():
    linear = nn.Linear(64, 64).requires_grad_(False)
    layer = _fmt().convert(linear, role="generator", training=True, path="emulate")
    x = torch.randn(32, 64, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is None and x.grad is not None and torch.isfinite(x.grad).all()


def test_quantized_weight_follows_optimizer_steps_and_refresh_drops_it():
    layer = _fmt().convert(nn.Linear(64, 64), role="generator", training=True, path="emulate")
    before = layer.quantized_weight()
    assert layer.quantized_weight() is before  # cached while the master weight is unchanged
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer(torch.randn(16, 64)).square().sum().backward()
    opt.step()
    after = layer.quantized_weight()
    assert after is not before and not torch.equal(after.values, before.values)  # re-derived after the step
    x = torch.randn(16, 64)
    with torch.no_grad():  # the fast forward's kept dequantized weight followed the step too
        expected = backend.matmul(backend.quantize(x, rule="mse", path="emulate"), after, path="emulate") + layer.bias
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    layer.refresh()
    assert not layer._cache


def test_cast_keeps_packed_buffers_and_the_model_cast_goes_through_the_format(tiny_model):
    quantize_model(tiny_model, _fmt(), role="generator", path="emulate", training=False)
    layer = tiny_model.blocks[0].ffn[0]
    scales = layer.quantized_weight_scale_factors.clone()
    cast_model(tiny_model, torch.bfloat16)
    assert layer.quantized_weight_scale_factors.dtype == torch.float8_e4m3fn
    assert torch.equal(layer.quantized_weight_scale_factors.view(torch.uint8), scales.view(torch.uint8))
    assert layer.quantized_weight_amax.dtype == torch.float32 and layer.bias.dtype == torch.bfloat16
    with torch.no_grad():
        out = tiny_model(torch.randn(1, 48, 2, 8, 8).bfloat16(), torch.tensor([500.0]), torch.randn(1, 16, 32))
    assert torch.isfinite(out).all()
    assert refresh_model(tiny_model) == 20


def test_emulated_debug_dit_stays_close_to_bf16(tiny_model):
    x, t, ctx = torch.randn(1, 48, 2, 8, 8), torch.tensor([500.0]), torch.randn(1, 16, 32)
    quantized = copy.deepcopy(tiny_model)
    report = quantize_model(quantized, _fmt(), role="generator", path="emulate", training=False)
    assert report.converted == 20 and report.path == "emulate"
    with torch.no_grad():
        assert _rel(quantized(x, t, ctx), tiny_model(x, t, ctx)) < 0.1


def test_real_path_is_refused_on_the_cpu_and_auto_emulates():
    with pytest.raises(ConfigError, match="needs a Blackwell CUDA GPU"):
        select_path(_fmt(), "real", torch.device("cpu"), where="quant.generator")
    assert select_path(_fmt(), "auto", torch.device("cpu"), where="quant.generator")[0] == "emulate"


def test_5b_meta_build_converts_300_linears_and_reports_packed_bytes():
    with torch.device("meta"):
        model = WanDiT(dit_preset("wan2.2-ti2v-5b"))
    report = quantize_model(model, _fmt(), role="generator", path="emulate", training=False)
    converted = [name for name, _ in quantized_modules(model)]
    assert report.converted == len(converted) == 300
    assert all(sum(n.startswith(f"blocks.{i}.") for n in converted) == 10 for i in range(30))
    kept = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    assert kept == ["head.head", "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
                    "time_projection.1"]  # LongLive's DEFAULT_GENERATOR_FILTERED_MODULES (the linears of it)
    weights = sum(m.in_features * m.out_features for _, m in quantized_modules(model))
    assert weights == 30 * (8 * 3072 * 3072 + 2 * 3072 * 14336)
    assert report.packed_bytes == weights // 2 + weights // 16 + 300 * (4 + 6 * 4)  # values, E4M3 scales, amax, meta
    assert all(isinstance(m, NVFP4Linear) and m.quantized_weight_values.is_meta for _, m in quantized_modules(model))
