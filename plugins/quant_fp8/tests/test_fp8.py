"""FP8 E4M3 row-wise: rounding, the linear within E4M3's error bound, the _scaled_mm path, packing, casts."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from longlive.errors import ConfigError
from longlive.model.checkpoint import load_strict, save_safetensors_atomic
from longlive.model.dit import WanDiT
from longlive.model.presets import dit_preset
from longlive.quant.apply import quantize_model, select_path
from longlive.quant.format import QuantFormat, cast_model, packed_bytes, quantized_modules, refresh_model
from longlive_plugins.quant_fp8 import fp8
from longlive_plugins.quant_fp8.format import FP8RowwiseFormat
from longlive_plugins.quant_fp8.linear import FP8Linear
from longlive_plugins.quant_fp8.plugin import QuantFP8Config

UNIT_ROUNDOFF = 2.0**-4  # E4M3: 3 mantissa bits, round to nearest -> relative error <= 2^-4 for normals
SUBNORMAL_HALF_STEP = 2.0**-10  # below 2^-6 the spacing is 2^-9: absolute error <= 2^-10 (times the row scale)


def _fmt(**config) -> FP8RowwiseFormat:
    return FP8RowwiseFormat(QuantFP8Config(**config))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _error_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Elementwise bound on |Q(x)Q(w)^T - x w^T| from per-element rounding bounds (fp64).

    |x_q - x| <= e_x = 2^-4 |x| + 2^-10 s_x (same for w), so
    |dy| <= e_x |w|^T + |x| e_w^T + e_x e_w^T.
    """
    x, w = x.double(), w.double()
    ex = UNIT_ROUNDOFF * x.abs() + SUBNORMAL_HALF_STEP * x.abs().amax(1, keepdim=True) / fp8.E4M3_MAX
    ew = UNIT_ROUNDOFF * w.abs() + SUBNORMAL_HALF_STEP * w.abs().amax(1, keepdim=True) / fp8.E4M3_MAX
    return ex @ w.abs().t() + x.abs() @ ew.t() + ex @ ew.t()


def test_the_format_satisfies_the_protocol():
    assert isinstance(_fmt(), QuantFormat)


def test_quantize_rows_is_e4m3_rounding_of_the_row_scaled_values():
    torch.manual_seed(0)
    x = torch.randn(8, 64) * torch.logspace(-3, 3, 8)[:, None]  # rows six decades apart
    x[3] = 0.0
    q, s = fp8.quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (8, 1) and s.dtype == torch.float32
    assert torch.equal(s[:, 0], x.abs().amax(1) / 448)
    assert q.float().abs().amax(1)[s[:, 0] > 0].eq(448).all()  # each row's max lands on E4M3's max
    assert fp8.dequantize_rows(q, s)[3].eq(0).all() and torch.isfinite(q.float()).all()
    # The reference rounding: the nearest E4M3 value of x/s, from the table of all 256 codes.
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)].unique()
    v = (x / torch.where(s > 0, s, torch.ones_like(s))).double()
    dist = (v[..., None] - grid.double()).abs()
    nearest = grid[dist.argmin(-1)]
    ties = (dist.sort(-1).values[..., 1] - dist.min(-1).values) == 0
    assert torch.equal(q.float()[~ties], nearest[~ties].float())
    err = (fp8.dequantize_rows(q, s).double() - x.double()).abs()
    assert (err <= UNIT_ROUNDOFF * x.double().abs() + SUBNORMAL_HALF_STEP * s.double() + 1e-12).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_emulated_linear_is_within_the_e4m3_error_bound(dtype):
    torch.manual_seed(1)
    linear = nn.Linear(128, 96).to(dtype)
    x = torch.randn(3, 17, 128, dtype=dtype)
    layer = _fmt().convert(linear, role="generator", training=False, path="emulate")
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == dtype and y.shape == (3, 17, 96)
    x2d, w = x.reshape(-1, 128).double(), linear.weight.double()
    exact = x2d @ w.t()
    got = (y.reshape(-1, 96).double() - linear.bias.double())
    # The rigorous band: rounding of both operands (_error_bound), plus the output's rounding to
    # `dtype` (2^-8 relative for BF16, 2^-24 for fp32: |y| <= |x||w|^T bounds it) and fp32 accumulation.
    out_round = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7}[dtype]
    bound = _error_bound(x2d, w) + (out_round + 1e-5) * (x2d.abs() @ w.abs().t()) + 1e-6
    assert ((got - exact).abs() <= bound).all()
    # Typical error: E4M3's rounding is ~3% rms per operand element, so ~3-4% of the output's norm.
    assert 0.005 < _rel(got, exact) < 0.05


def test_real_path_gemm_matches_the_emulated_gemm():
    """The real path's call (operand layout, [M,1] and [1,N] scales) through torch._scaled_mm, here its CPU kernel."""
    torch.manual_seed(2)
    qx, sx = fp8.quantize_rows(torch.randn(40, 64))
    qw, sw = fp8.quantize_rows(torch.randn(48, 64) * 0.02)
    emulated = fp8.matmul_emulated(qx, sx, qw, sw, torch.float32)
    real = fp8.matmul(qx, sx, qw, sw, torch.float32, path="real")
    assert real.shape == (40, 48) and _rel(real, emulated) < 1e-6
    bf16 = fp8.matmul(qx, sx, qw, sw, torch.bfloat16, path="real")
    assert bf16.dtype == torch.bfloat16 and _rel(bf16, emulated) < 2.0**-8


def test_real_path_is_refused_on_the_cpu_and_auto_emulates():
    ok, why = _fmt().probe(torch.device("cpu"))
    assert not ok and "compute capability >= 8.9" in why
    with pytest.raises(ConfigError, match=r"format 'fp8_rowwise' cannot run its real path on cpu"):
        select_path(_fmt(), "real", torch.device("cpu"), where="quant.generator")
    assert select_path(_fmt(), "auto", torch.device("cpu"), where="quant.generator")[0] == "emulate"


def test_training_gradients_are_straight_through_the_dequantized_operands():
    torch.manual_seed(3)
    linear = nn.Linear(64, 32)
    layer = _fmt().convert(linear, role="generator", training=True, path="emulate")
    assert not layer.materialized and layer.weight.requires_grad
    x = torch.randn(5, 64, requires_grad=True)
    y = layer(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    qx, sx = fp8.quantize_rows(x.detach())
    qw, sw = fp8.quantize_rows(linear.weight.detach())
    torch.testing.assert_close(x.grad, dy @ fp8.dequantize_rows(qw, sw))
    torch.testing.assert_close(layer.weight.grad, dy.t() @ fp8.dequantize_rows(qx, sx))
    torch.testing.assert_close(layer.bias.grad, dy.sum(0))
    # STE: the gradients are within E4M3's error of the exact ones
    assert _rel(layer.weight.grad, dy.t() @ x.detach()) < 0.05


def test_quantized_weight_follows_optimizer_steps_and_refresh_drops_it():
    torch.manual_seed(4)
    layer = _fmt().convert(nn.Linear(32, 16), role="generator", training=True, path="emulate")
    before = layer.quantized_weight()[0].float().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer(torch.randn(4, 32)).square().sum().backward()
    opt.step()
    assert not torch.equal(layer.quantized_weight()[0].float(), before)  # new weight version -> re-quantized
    refresh_model(nn.Sequential(layer))
    assert not layer._cache


def test_debug_dit_emulated_stays_close_and_packed_state_round_trips(tiny_model, tmp_path):
    x, t, ctx = torch.randn(1, 48, 2, 8, 8), torch.tensor([500.0]), torch.randn(1, 16, 32)
    quantized = copy.deepcopy(tiny_model)
    report = quantize_model(quantized, _fmt(), role="generator", path="emulate", training=False)
    assert report.converted == 20 and report.path == "emulate"
    with torch.no_grad():
        ref, out = tiny_model(x, t, ctx), quantized(x, t, ctx)
    assert _rel(out, ref) < 0.03
    save_safetensors_atomic(quantized.state_dict(), tmp_path / "fp8.safetensors")
    fresh = copy.deepcopy(tiny_model)
    quantize_model(fresh, _fmt(), role="generator", path="emulate", training=False)
    for _, m in quantized_modules(fresh):
        m.weight_fp8.zero_()
    from safetensors.torch import load_file

    load_strict(fresh, load_file(tmp_path / "fp8.safetensors"), what="fp8 weights")
    with torch.no_grad():
        assert torch.equal(fresh(x, t, ctx), out)
    # Through the format: one module's packed state moves into another.
    (_, a), (_, b) = quantized_modules(quantized)[:2]
    fmt = a.quant_format
    target = copy.deepcopy(a)
    target.weight_fp8.zero_()
    fmt.load_packed(target, fmt.packed_state(a))
    assert torch.equal(target.weight_fp8.view(torch.uint8), a.weight_fp8.view(torch.uint8))
    with pytest.raises(ConfigError, match="weight_fp8 is"):
        fmt.load_packed(target, fmt.packed_state(b)) if b.weight_fp8.shape != a.weight_fp8.shape else \
            fmt.load_packed(target, {"weight_fp8": b.weight_fp8.float(), "weight_scale": b.weight_scale})
    with pytest.raises(ConfigError, match="lacks"):
        fmt.load_packed(target, {"weight_fp8": a.weight_fp8})


def test_cast_keeps_packed_tensors_and_the_model_cast_goes_through_the_format(tiny_model):
    quantize_model(tiny_model, _fmt(), role="generator", path="emulate", training=False)
    layer = tiny_model.blocks[0].ffn[0]
    q, s = layer.weight_fp8.clone(), layer.weight_scale.clone()
    cast_model(tiny_model, torch.bfloat16)
    assert layer.weight_fp8.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
    assert torch.equal(layer.weight_fp8.view(torch.uint8), q.view(torch.uint8)) and torch.equal(layer.weight_scale, s)
    assert layer.bias.dtype == torch.bfloat16
    with torch.no_grad():
        out = tiny_model(torch.randn(1, 48, 2, 8, 8).bfloat16(), torch.tensor([500.0]), torch.randn(1, 16, 32))
    assert torch.isfinite(out).all()


def test_5b_meta_build_converts_300_linears_and_reports_packed_bytes():
    with torch.device("meta"):
        model = WanDiT(dit_preset("wan2.2-ti2v-5b"))
    report = quantize_model(model, _fmt(), role="generator", path="emulate", training=False)
    assert report.converted == 300
    weights = sum(m.in_features * m.out_features for _, m in quantized_modules(model))
    rows = sum(m.out_features for _, m in quantized_modules(model))
    assert report.packed_bytes == packed_bytes(model) == weights + 4 * rows  # 1 byte per weight, fp32 per row
    assert all(isinstance(m, FP8Linear) and m.weight_fp8.is_meta for _, m in quantized_modules(model))
