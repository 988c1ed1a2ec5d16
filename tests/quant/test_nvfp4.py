"""The NVFP4 reference on its own: element and scale tables, layouts, RHT, rounding, error, GEMM."""
from __future__ import annotations

import math

import pytest
import torch

from longlive.quant import nvfp4

GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


# ---- E2M1 ---------------------------------------------------------------------------------


def test_e2m1_all_16_codes_decode_to_the_grid():
    values = nvfp4.e2m1_values(torch.arange(16, dtype=torch.uint8))
    expected = list(GRID) + [-v for v in GRID]
    assert values.tolist() == expected
    assert math.copysign(1.0, values[8].item()) == -1.0  # code 8 is -0


def test_e2m1_every_grid_value_rounds_to_its_own_code():
    codes = torch.arange(16, dtype=torch.uint8)
    values = nvfp4.e2m1_values(codes)
    back = nvfp4.round_to_e2m1(values)
    assert torch.equal(nvfp4.e2m1_values(back), values)
    assert torch.equal(back[codes != 8], codes[codes != 8])  # -0.0 is not < 0: code 0


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_e2m1_every_midpoint_rounds_to_the_even_code(sign):
    for low, high in zip(GRID, GRID[1:]):
        code = nvfp4.round_to_e2m1(torch.tensor([sign * (low + high) / 2]))[0].item()
        even = low if GRID.index(low) % 2 == 0 else high  # even code = mantissa bit 0
        assert abs(nvfp4.e2m1_values(torch.tensor([code], dtype=torch.uint8)).item()) == even
        assert (code >= 8) == (sign < 0)


def test_e2m1_rounding_is_nearest_on_a_dense_sweep_and_saturates():
    x = torch.arange(-8 * 256, 8 * 256 + 1, dtype=torch.float32) / 256  # step 1/256 hits every midpoint
    got = nvfp4.e2m1_values(nvfp4.round_to_e2m1(x))
    grid = torch.tensor(GRID)
    dist = (x.abs()[:, None].clamp(max=6) - grid[None]).abs()
    best = dist.min(dim=1).values
    assert torch.equal((got.abs() - x.abs().clamp(max=6)).abs(), best)  # nearest (ties: any nearest)
    assert got.abs().max().item() == 6.0
    assert torch.equal(got[x.abs() > 6].abs(), torch.full_like(got[x.abs() > 6], 6.0))


# ---- E4M3 ---------------------------------------------------------------------------------


def test_e4m3_all_256_bit_patterns_decode_like_torch():
    bits = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    ours = nvfp4.e4m3_values(bits)
    torchs = bits.view(torch.float8_e4m3fn).float()
    nan = torch.isnan(torchs)
    assert bits[nan].tolist() == [0x7F, 0xFF]
    assert torch.isnan(ours[nan]).all()
    assert torch.equal(ours[~nan], torchs[~nan])
    assert ours[0x7E].item() == 448.0 and ours[0x01].item() == 2.0**-9 and ours[0x08].item() == 2.0**-6


def test_e4m3_cast_round_trips_every_value_ties_to_even_and_clamps():
    positive = nvfp4.e4m3_values(torch.arange(0, 0x7F, dtype=torch.int32).to(torch.uint8))  # 0 .. 448
    assert torch.equal(nvfp4.round_to_e4m3(positive).float(), positive)
    mid = (positive[:-1] + positive[1:]) / 2  # exact in fp32
    got = nvfp4.round_to_e4m3(mid).view(torch.uint8).to(torch.int32)
    lower = torch.arange(0, 0x7E, dtype=torch.int32)
    expected = torch.where(lower % 2 == 0, lower, lower + 1)  # the even bit pattern wins
    assert torch.equal(got, expected)
    assert nvfp4.round_to_e4m3(torch.tensor([2.0**-10])).float().item() == 0.0  # subnormal tie -> 0
    big = torch.tensor([448.0, 449.0, 464.0, 480.0, 1e6, float("inf")])
    assert nvfp4.round_to_e4m3(big).float().tolist() == [448.0] * 6
    assert nvfp4.round_to_e4m3(torch.tensor([float("nan")])).view(torch.uint8).item() == 0x7F


# ---- Layouts ------------------------------------------------------------------------------


def test_pack_unpack_round_trip_and_low_nibble_first():
    codes = torch.randint(0, 16, (3, 5, 32), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    packed = nvfp4.pack_fp4(codes)
    assert packed.shape == (3, 5, 16) and packed.dtype == torch.uint8
    assert torch.equal(nvfp4.unpack_fp4(packed), codes)
    assert nvfp4.pack_fp4(torch.tensor([1, 2], dtype=torch.uint8)).item() == 0x21
    with pytest.raises(ValueError, match="odd"):
        nvfp4.pack_fp4(torch.zeros(3, dtype=torch.uint8))


@pytest.mark.parametrize("rows,cols", [(1, 1), (128, 4), (130, 5), (256, 8), (37, 13)])
def test_blocked_layout_round_trip_with_padding(rows, cols):
    scales = torch.arange(rows * cols, dtype=torch.int32).reshape(rows, cols)
    blocked = nvfp4.to_blocked(scales)
    assert blocked.numel() == -(-rows // 128) * 128 * -(-cols // 4) * 4
    assert torch.equal(nvfp4.from_blocked(blocked, rows, cols), scales)
    assert int((blocked != 0).sum()) == rows * cols - 1  # padding is zeros (scales[0, 0] is 0 too)


def test_blocked_layout_places_row_32i_plus_j_col_c_at_16j_plus_4i_plus_c():
    scales = torch.zeros(128, 4, dtype=torch.int32)
    scales[33, 2] = 7  # i = 1, j = 1, c = 2
    assert nvfp4.to_blocked(scales).nonzero().flatten().tolist() == [16 * 1 + 4 * 1 + 2]


# ---- Random Hadamard transform ------------------------------------------------------------


@pytest.mark.parametrize("seed", [None, 0, 1, 12345])
def test_rht_is_orthogonal_and_keeps_gemms(seed):
    m = nvfp4.rht_matrix(nvfp4.rht_signs(seed))
    assert torch.equal(m @ m.T, torch.eye(16))  # entries +-1/4: exact in fp32
    assert set(m.abs().flatten().tolist()) == {0.25}
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 64, generator=gen), torch.randn(5, 64, generator=gen)
    signs = nvfp4.rht_signs(seed)
    rotated = nvfp4.apply_rht(x, signs).double() @ nvfp4.apply_rht(y, signs).double().T
    torch.testing.assert_close(rotated, x.double() @ y.double().T, rtol=0, atol=1e-5)


def test_rht_signs_are_seeded():
    assert torch.equal(nvfp4.rht_signs(7), nvfp4.rht_signs(7))
    assert not torch.equal(nvfp4.rht_signs(7), nvfp4.rht_signs(8))
    assert set(nvfp4.rht_signs(7).tolist()) <= {-1.0, 1.0}


# ---- Stochastic rounding --------------------------------------------------------------------


def test_stochastic_rounding_is_unbiased():
    # 97 points over [-6, 6] (grid points, midpoints and generic values); n draws each.
    x = torch.cat([torch.linspace(-6, 6, 89), torch.tensor([0.25, 0.75, 2.5, 5.0, -1.25, -3.5, 0.1, 5.9])])
    n = 20_000
    gen = torch.Generator().manual_seed(1234)
    draws = nvfp4.e2m1_values(nvfp4.round_to_e2m1(x.expand(n, -1), round_style="stochastic", generator=gen))
    grid = torch.tensor(GRID)
    a = x.abs()
    lower = grid[(a[:, None] >= grid[None]).sum(1) - 1]
    upper = grid[((a[:, None] >= grid[None]).sum(1)).clamp(max=7)]
    # every draw is one of the two neighbours of x
    assert ((draws.abs() == lower) | (draws.abs() == upper)).all()
    # Each draw is lower or upper with P(upper) = p, so the mean of n draws has standard deviation
    # gap * sqrt(p (1 - p) / n). 6 sigma per point: with 97 points a false failure has probability
    # ~1e-7 (and the seed is fixed); a biased rounder (e.g. p off by 1%) fails by > 10 sigma.
    gap = upper - lower
    p = torch.where(gap > 0, (a - lower) / gap.clamp(min=1e-9), 0.0)
    sigma = gap * torch.sqrt(p * (1 - p) / n)
    err = (draws.mean(0) - x).abs()
    assert (err <= 6 * sigma + 1e-6).all(), (err / (sigma + 1e-12)).max()
    on_grid = torch.isin(a, grid)
    assert torch.equal(draws[:, on_grid], x[on_grid].expand(n, -1))


def test_stochastic_quantize_is_unbiased_per_element():
    # 4,000 copies of one 64-element row: same amax and scales, independent rounding per copy.
    row = torch.randn(1, 64, generator=torch.Generator().manual_seed(8)) * 3
    n = 4000
    q = nvfp4.quantize(row.expand(n, -1), scale_rule="static_6", round_style="stochastic",
                       generator=torch.Generator().manual_seed(9))
    draws = nvfp4.dequantize(q)  # [n, 64]
    # Unbiased inside the representable range: a block max whose E4M3 scale rounded down lies
    # above 6 * s_b * g and saturates (as on the hardware); only block maxima can.
    limit = 6 * q.scales[0].float().repeat_interleave(16) * q.global_scale
    inside = row[0].abs() <= limit
    assert int((~inside).sum()) <= 64 // 16
    # per element the draws take two values one grid gap apart: std of the mean <= gap / (2 sqrt(n))
    gap = draws.max(0).values - draws.min(0).values
    err = (draws.double().mean(0) - row[0].double()).abs()
    assert (err[inside] <= 6 * gap[inside] / (2 * n**0.5) + 1e-6).all()


def test_stochastic_quantize_error_matches_fouroversix_pinned_values():
    # fouroversix's test_stochastic_rounding pins torch.dist(dequant(SR-quant(x)), x) for 1024^2
    # N(0,1) at ~137 (static_6) and ~122 (mse), +-5% (nvfp4.md §5).
    x = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    for rule, pinned in (("static_6", 137.0), ("mse", 122.0)):
        q = nvfp4.quantize(x, scale_rule=rule, round_style="stochastic", generator=torch.Generator().manual_seed(1))
        assert abs(torch.dist(nvfp4.dequantize(q), x).item() / pinned - 1) < 0.05


def test_stochastic_rounding_follows_its_generator():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 3
    a = nvfp4.round_to_e2m1(x, round_style="stochastic", generator=torch.Generator().manual_seed(5))
    b = nvfp4.round_to_e2m1(x, round_style="stochastic", generator=torch.Generator().manual_seed(5))
    c = nvfp4.round_to_e2m1(x, round_style="stochastic", generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- Quantize / dequantize ------------------------------------------------------------------


def _rel_sq_err(x, rule, **kw):
    return float(((nvfp4.dequantize(nvfp4.quantize(x, scale_rule=rule, **kw)) - x) ** 2).sum() / (x**2).sum())


def test_quantize_dequantize_error_is_in_the_published_band():
    # nvfp4.md §5 (fouroversix on CPU, N(0,1) 1024^2): static_6 0.00906, mse 0.00756,
    # static_6 + 2D 0.01240. A 256x1024 sample lands within +-5% of those.
    x = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
    static6, mse, two_d = _rel_sq_err(x, "static_6"), _rel_sq_err(x, "mse"), _rel_sq_err(x, "static_6", block_2d=True)
    assert 0.0086 < static6 < 0.0095
    assert 0.0072 < mse < 0.0080
    assert 0.0118 < two_d < 0.0130
    for rule in ("static_4", "mae", "abs_max"):
        assert 0.0070 < _rel_sq_err(x, rule) < 0.0102


def test_quantize_layouts_padding_and_shapes():
    x = torch.randn(2, 3, 40)
    q = nvfp4.quantize(x)
    assert q.packed.shape == (2, 3, 24) and q.scales.shape == (2, 3, 3) and q.amax.shape == ()
    assert q.scales.dtype == torch.float8_e4m3fn and q.packed.dtype == torch.uint8
    assert torch.equal(q.codes()[..., 40:], torch.zeros(2, 3, 8, dtype=torch.uint8))
    assert nvfp4.dequantize(q, torch.bfloat16).shape == x.shape
    assert q.amax.item() == x.abs().max().item()
    assert q.scales.float().max().item() == 448.0  # the block holding amax


def test_zero_tensor_gives_zero_codes_scales_and_output():
    q = nvfp4.quantize(torch.zeros(16, 32), scale_rule="mse")
    assert not q.packed.any() and not q.scales.view(torch.uint8).any() and q.amax.item() == 0
    out = nvfp4.dequantize(q)
    assert torch.equal(out, torch.zeros(16, 32))


def test_nan_input_never_dequantizes_to_finite_values():
    x = torch.randn(4, 32)
    x[1, 5] = float("nan")
    assert torch.isnan(nvfp4.dequantize(nvfp4.quantize(x))).any()


@pytest.mark.parametrize("rule", ["static_6", "mse"])
def test_2d_blocks_quantize_w_and_w_transposed_alike(rule):
    w = torch.randn(48, 80, generator=torch.Generator().manual_seed(2))
    a = nvfp4.dequantize(nvfp4.quantize(w, scale_rule=rule, block_2d=True))
    b = nvfp4.dequantize(nvfp4.quantize(w.T.contiguous(), scale_rule=rule, block_2d=True))
    assert torch.equal(a.T, b)
    scales = nvfp4.quantize(w, block_2d=True).scales.view(torch.uint8)
    assert torch.equal(scales, scales[::16].repeat_interleave(16, 0))  # one scale per 16x16 tile


def test_four_over_six_scales_respect_the_256_bound():
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(4)) * torch.rand(64, 1) * 10
    for rule in ("mse", "mae", "abs_max"):
        scales = nvfp4.quantize(x, scale_rule=rule).scales.float()
        assert scales.max().item() <= 256 * 1.5
    assert nvfp4.quantize(x, scale_rule="static_4").scales.float().max().item() == 448.0


def test_bad_arguments_fail_with_a_clear_message():
    with pytest.raises(ValueError, match="scale_rule='static_5'"):
        nvfp4.quantize(torch.ones(16), scale_rule="static_5")
    with pytest.raises(ValueError, match="block_2d needs a 2-D tensor"):
        nvfp4.quantize(torch.ones(2, 16, 16), block_2d=True)
    with pytest.raises(ValueError, match="round_style"):
        nvfp4.round_to_e2m1(torch.ones(2), round_style="up")


# ---- Emulated GEMM ----------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["static_6", "mse"])
def test_emulated_gemm_equals_float64_of_the_dequantized_operands(rule):
    gen = torch.Generator().manual_seed(5)
    a = nvfp4.quantize(torch.randn(3, 24, 400, generator=gen), scale_rule=rule)
    b = nvfp4.quantize(torch.randn(40, 400, generator=gen) * 0.02, scale_rule=rule, block_2d=True)
    out = nvfp4.emulated_gemm(a, b, out_dtype=torch.float32)
    assert out.shape == (3, 24, 40)
    lhs, rhs = nvfp4.block_values(a).double().reshape(-1, 400), nvfp4.block_values(b).double()
    alpha = a.global_scale.double() * b.global_scale.double()
    exact = (lhs @ rhs.T) * alpha
    # FP32 accumulation of K = 400 exact products: |error| <= gamma_K * sum|a||b| (Higham 3.5),
    # gamma_K = K u / (1 - K u), u = 2^-24; plus one rounding for alpha and one for the product.
    u = 2.0**-24
    k = lhs.shape[1]
    bound = (k * u / (1 - k * u) + 3 * u) * ((lhs.abs() @ rhs.abs().T) * alpha)
    assert ((out.double().reshape(-1, 40) - exact).abs() <= bound).all()
    # the same against the dequantized tensors themselves (what a user compares with)
    deq = nvfp4.dequantize(a).double().reshape(-1, 400) @ nvfp4.dequantize(b).double().T
    torch.testing.assert_close(out.double().reshape(-1, 40), deq, rtol=1e-5, atol=1e-6)
