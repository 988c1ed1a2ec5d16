"""The emulated path: TE's recipe semantics against the core NVFP4 reference in TE's op order.

Each GEMM of a converted linear is recomputed here from `nvfp4.quantize(..., op_order="te")` and
`nvfp4.emulated_gemm`, operand by operand as TE's recipe prescribes (plugins/quant_te/recipe.py,
emulated.py), on the NVFP4 tests' shapes (token counts that are not multiples of 16 included), and
compared bit for bit; stochastic rounding draws are matched by seeding. Then the recipe's
properties on their own: 2D weights quantize W and W^T alike, RHT cancels in wgrad, stochastic
rounding is unbiased, 4/6 scopes reach the right operands.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from longlive.errors import ConfigError
from longlive.quant import nvfp4
from longlive.structure import structure
from longlive_plugins.quant_te.emulated import TEEmulatedLinear
from longlive_plugins.quant_te.format import TENVFP4Format
from longlive_plugins.quant_te.plugin import QuantTEConfig
from longlive_plugins.quant_te.recipe import operand_rules, recipe_kwargs

SHAPES = [(64, 128, 64), (100, 80, 48), (37, 208, 32), (1, 16, 16), (3, 32, 16), (129, 48, 64)]  # (M, K, N)


def _linear(k: int, n: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(k, n)
    with torch.no_grad():
        linear.weight.normal_(0.0, k**-0.5)
    return linear


def _te(x, **kw):
    return nvfp4.quantize(x, op_order="te", **kw)


def _columnwise(t2d, *, rht, **kw):
    """TE's column-wise copy: transpose, zero tokens to a multiple of 16, RHT in the tensor's dtype, quantize."""
    m = t2d.shape[0]
    t = torch.cat([t2d, t2d.new_zeros(-m % 16, t2d.shape[1])]).t().contiguous()
    if rht:
        t = nvfp4.apply_rht(t, nvfp4.rht_signs(None)).to(t.dtype)
    return _te(t, **kw)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("table", [{}, {"disable_2d_quantization": True, "disable_rht": True},
                                   {"disable_rht": True, "disable_stochastic_rounding": True, "nvfp4_4over6": "all",
                                    "nvfp4_4over6_err_mode": "MSE"}], ids=["default", "1d_no_rht", "4over6_all"])
def test_fprop_dgrad_wgrad_equal_the_core_reference_in_te_order(shape, table):
    m, k, n = shape
    config = structure(table, QuantTEConfig, where="plugins.quant_te")
    rules = operand_rules(config)
    linear = _linear(k, n, seed=m)
    module = TENVFP4Format(config).convert(copy.deepcopy(linear), role="generator", training=True, path="emulate")
    x = torch.randn(m, k, requires_grad=True)
    dy = torch.randn(m, n)
    y = module(x)
    torch.manual_seed(7)  # the stochastic-rounding draws: dgrad's Q(dy) first, then wgrad's Q(dy^T)
    y.backward(dy)

    w = linear.weight.detach()
    weight_kw = dict(scale_rule=rules.weight.scale_rule, block_2d=rules.weight.block_2d)
    in_kw = dict(scale_rule=rules.input.scale_rule)
    grad_kw = dict(scale_rule="static_6", round_style=rules.grad.round_style)
    want_y = nvfp4.emulated_gemm(_te(x.detach(), **in_kw), _te(w, **weight_kw), torch.float32) + linear.bias.detach()
    torch.manual_seed(7)
    want_dx = nvfp4.emulated_gemm(_te(dy, **grad_kw), _te(w.t().contiguous(), **weight_kw), torch.float32)
    want_dw = nvfp4.emulated_gemm(_columnwise(dy, rht=rules.grad.rht, **grad_kw),
                                  _columnwise(x.detach(), rht=rules.input.rht, **in_kw), torch.float32)
    assert torch.equal(y.detach(), want_y)
    assert torch.equal(x.grad, want_dx)
    assert torch.equal(module.weight.grad, want_dw)
    assert torch.equal(module.bias.grad, dy.sum(0))
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(module.weight.grad).all()


def test_the_recipe_maps_each_operand_as_te_does():
    default = operand_rules(QuantTEConfig())
    assert (default.input.block_2d, default.input.round_style, default.input.rht) == (False, "nearest", True)
    assert (default.weight.block_2d, default.weight.round_style, default.weight.rht) == (True, "nearest", False)
    assert (default.grad.block_2d, default.grad.round_style, default.grad.rht) == (False, "stochastic", True)
    assert {r.scale_rule for r in (default.input, default.weight, default.grad)} == {"static_6"}
    off = QuantTEConfig(disable_rht=True, disable_stochastic_rounding=True, disable_2d_quantization=True,
                        nvfp4_4over6="activations")
    rules = operand_rules(off)
    assert not rules.weight.block_2d and rules.grad.round_style == "nearest" and not rules.input.rht
    assert (rules.input.scale_rule, rules.weight.scale_rule, rules.grad.scale_rule) == ("mae", "static_6", "static_6")
    assert set(recipe_kwargs(off)) == {"disable_rht", "disable_stochastic_rounding", "disable_2d_quantization",
                                       "nvfp4_4over6", "nvfp4_4over6_e4m3_use_256", "nvfp4_4over6_err_mode",
                                       "row_scaled_activation", "backward_override"}


@pytest.mark.parametrize("table, match", [
    ({"nvfp4_4over6": "all"}, r'^plugins.quant_te.nvfp4_4over6: "all" needs disable_rht = true and '
                              r"disable_stochastic_rounding = true: TE's 4over6"),
    ({"nvfp4_4over6": "weights", "disable_rht": True}, r"needs disable_stochastic_rounding = true"),
    ({"nvfp4_4over6": "half"}, r"^plugins.quant_te.nvfp4_4over6: \"half\" is not allowed"),
    ({"nvfp4_4over6_err_mode": "mae"}, r"nvfp4_4over6_err_mode: \"mae\" is not allowed"),
    ({"disable_rht": 1}, r"plugins.quant_te.disable_rht"),
    ({"disable_hadamard": True}, r"plugins.quant_te.disable_hadamard: unknown key"),
])
def test_the_config_is_strict_and_checks_te_constraints(table, match):
    with pytest.raises(ConfigError, match=match):
        structure(table, QuantTEConfig, where="plugins.quant_te")


def test_four_over_six_bounds_follow_e4m3_use_256_per_operand():
    config = QuantTEConfig(disable_rht=True, disable_stochastic_rounding=True, nvfp4_4over6="all",
                           nvfp4_4over6_e4m3_use_256="weights")
    rules = operand_rules(config)
    assert (rules.weight.scale_max, rules.input.scale_max, rules.grad.scale_max) == (None, 448.0, None)
    module = TENVFP4Format(config).convert(_linear(32, 16, 5), role="generator", training=False, path="emulate")
    x = torch.randn(4, 32)
    want = nvfp4.emulated_gemm(_te(x, scale_rule="mae", scale_max=448.0),
                               _te(module.weight.detach(), scale_rule="mae", block_2d=True), torch.float32)
    with torch.no_grad():
        assert torch.equal(module(x), want + module.bias)


def test_2d_weights_make_dgrad_use_the_transposed_fprop_weight():
    module = TEEmulatedLinear.from_linear(_linear(64, 48, 1), rules=operand_rules(QuantTEConfig()), quant_format=None)
    w, w_t = nvfp4.dequantize(module.quantized_weight()), nvfp4.dequantize(module.quantized_weight_t())
    assert torch.equal(w.t(), w_t)
    one_d = TEEmulatedLinear.from_linear(_linear(64, 48, 1), rules=operand_rules(QuantTEConfig(
        disable_2d_quantization=True)), quant_format=None)
    assert not torch.equal(nvfp4.dequantize(one_d.quantized_weight()).t(), nvfp4.dequantize(one_d.quantized_weight_t()))


def test_rht_cancels_in_wgrad_and_stochastic_rounding_is_unbiased():
    linear = _linear(64, 32, 2)
    x, dy = torch.randn(128, 64), torch.randn(128, 32)
    exact = dy.t() @ x
    grads = {}
    for name, table in [("rht_sr", QuantTEConfig()), ("plain", QuantTEConfig(disable_rht=True,
                                                                                 disable_stochastic_rounding=True))]:
        module = TENVFP4Format(table).convert(copy.deepcopy(linear), role="generator", training=True, path="emulate")
        runs = []
        for seed in range(32):
            module.weight.grad = None
            torch.manual_seed(seed)
            module(x).backward(dy)
            runs.append(module.weight.grad.clone())
        grads[name] = torch.stack(runs)
    rel = lambda a: ((a - exact).norm() / exact.norm()).item()
    assert rel(grads["rht_sr"][0]) < 0.25  # one draw: RHT rotated back (H H^T = I), error of two 4-bit operands
    assert rel(grads["rht_sr"].mean(0)) < 0.6 * rel(grads["rht_sr"][0])  # SR: averaging draws converges
    assert torch.equal(grads["plain"][0], grads["plain"][-1])  # nearest rounding: deterministic


def test_weights_are_cached_per_version_and_refresh_drops_them():
    module = TENVFP4Format(QuantTEConfig()).convert(_linear(32, 16, 3), role="generator", training=True,
                                                    path="emulate")
    first = module.quantized_weight()
    assert module.quantized_weight() is first
    with torch.no_grad():
        module.weight.mul_(2.0)
    assert module.quantized_weight() is not first
    cached = module.quantized_weight()
    module.refresh()
    assert module.quantized_weight() is not cached
    x = torch.randn(8, module.in_features)
    for _ in range(2):  # the kept block values follow the weight: the forward equals the uncached GEMM
        expected = nvfp4.emulated_gemm(nvfp4.quantize(x, **module.rules.input.quantize_kwargs()),
                                       module.quantized_weight(), torch.float32) + module.bias
        assert torch.equal(module(x), expected)
        with torch.no_grad():
            module.weight.add_(0.5)


def test_bf16_inputs_and_a_frozen_base():
    linear = _linear(32, 16, 4).to(torch.bfloat16)
    linear.weight.requires_grad_(False)
    module = TENVFP4Format(QuantTEConfig()).convert(linear, role="generator", training=True, path="emulate")
    x = torch.randn(5, 3, 32, dtype=torch.bfloat16, requires_grad=True)
    y = module(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and y.shape == (5, 3, 16)
    assert module.weight.grad is None and x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()
