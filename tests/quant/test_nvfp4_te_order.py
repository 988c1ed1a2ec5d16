"""The NVFP4 reference's TE op order (`op_order="te"`) against TE's quantization formula written out here.

The formula is TransformerEngine 2.20's (its pure-PyTorch reference
`transformer_engine/pytorch/custom_recipes/reference_nvfp4.py`, which matches its kernels; see
../shared/reference/nvfp4.md §1.2 and §1.4), transcribed step by step in plain FP32 below, on the
shapes and distributions of the NVFP4 tests (tests/quant/test_nvfp4_vs_fouroversix.py): padding,
zeros, outliers, wide dynamic range, exact ties. We compare block values q * s_b (exact), the E4M3
scale bits and amax; codes can differ only where a block scale is 0 (TE then saturates the
elements to +-6 times a zero scale; we write 0), which the block values already cover.
"""
from __future__ import annotations

import pytest
import torch

from longlive.quant import nvfp4

FP32_MAX = torch.finfo(torch.float32).max


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rows_exp(shape, g):
    return torch.randn(shape, generator=g) * torch.exp(torch.randn(shape[0], 1, generator=g))


def _outlier_columns(shape, g):
    x = torch.randn(shape, generator=g)
    x[:, torch.randperm(shape[1], generator=g)[: max(1, shape[1] // 100)]] *= 20
    return x


def _midpoints(shape, g):  # E2M1 midpoints of blocks whose max maps to 6: every element an exact tie
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    x = mids[torch.randint(0, 7, shape, generator=g)] * torch.where(torch.rand(shape, generator=g) < 0.5, -1, 1)
    x[:, ::16] = 6.0
    return x


CASES = [  # (name, shape, make): the NVFP4 tests' shapes (padding, one block, odd sizes) and distributions
    ("normal", (128, 64), lambda s, g: torch.randn(s, generator=g)),
    ("normal_pad", (100, 80), lambda s, g: torch.randn(s, generator=g)),
    ("normal_pad_k", (37, 200), lambda s, g: torch.randn(s, generator=g)),
    ("one_block", (1, 16), lambda s, g: torch.randn(s, generator=g)),
    ("odd_small", (3, 17), lambda s, g: torch.randn(s, generator=g)),
    ("odd_rows", (129, 33), lambda s, g: torch.randn(s, generator=g)),
    ("zeros", (128, 64), lambda s, g: torch.zeros(s)),
    ("outlier_columns", (128, 256), _outlier_columns),
    ("rows_exp_randn", (128, 256), _rows_exp),
    ("tiny", (128, 128), lambda s, g: torch.randn(s, generator=g) * 1e-30),
    ("huge", (128, 64), lambda s, g: torch.randn(s, generator=g) * 1e30),
    ("midpoint_ties", (64, 64), _midpoints),
    ("sparse", (128, 128), lambda s, g: torch.randn(s, generator=g) * (torch.rand(s, generator=g) < 0.1)),
]


def _te_round(y: torch.Tensor) -> torch.Tensor:
    """E2M1 value of y in [-6, 6], TE's thresholds: ties 0.25, 1.25, 2.5, 5 round down, 0.75, 1.75, 3.5 up."""
    a = y.abs()
    out = torch.full_like(a, 6.0)
    for upper, inclusive, value in reversed([(0.25, True, 0.0), (0.75, False, 0.5), (1.25, True, 1.0),
                                             (1.75, False, 1.5), (2.5, True, 2.0), (3.5, False, 3.0),
                                             (5.0, True, 4.0)]):
        out = torch.where(a <= upper if inclusive else a < upper, value, out)
    return torch.where(y < 0, -out, out)


def _te_static6(x: torch.Tensor, tile_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TE's standard NVFP4 quantization: (block values q*s_b [R_pad, K_pad], scale bits [R_pad, K_pad/16], amax)."""
    rows, k = x.shape
    rp, kp = -(-rows // tile_rows) * tile_rows, -(-k // 16) * 16
    xf = torch.zeros(rp, kp)
    xf[:rows, :k] = x.float()
    amax = xf.abs().max()
    g_enc = torch.clamp(torch.tensor(6.0 * 448.0) / amax, max=FP32_MAX)  # 2688 / amax, capped
    g_enc = torch.where(g_enc == 0, torch.tensor(1.0), g_enc)
    g_dec = 1.0 / g_enc
    tiles = xf.abs().reshape(rp // tile_rows, tile_rows, kp // 16, 16).amax(dim=(1, 3))  # [R/t, K/16]
    vec_max = tiles.repeat_interleave(tile_rows, dim=0)  # [R_pad, K/16]
    s = torch.clamp(vec_max * (g_enc * torch.reciprocal(torch.tensor(6.0))), max=448.0).to(torch.float8_e4m3fn)
    enc_b = torch.clamp(1.0 / (s.float() * g_dec), max=FP32_MAX).repeat_interleave(16, dim=1)
    q = _te_round(torch.clamp(xf * enc_b, -6.0, 6.0))
    return q * s.float().repeat_interleave(16, dim=1), s.view(torch.uint8), amax


def _te_four_over_six_1d(x: torch.Tensor, mode: str, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TE's 4/6 on 1x16 blocks with the global E4M3 bound 256 or 448: (block values [R, K_pad], scale bits)."""
    rows, k = x.shape
    kp = -(-k // 16) * 16
    xf = torch.zeros(rows, kp)
    xf[:, :k] = x.float()
    blocks = xf.reshape(rows, kp // 16, 16)
    amax = xf.abs().max()
    g_enc = torch.clamp(torch.tensor(6.0 * bound) / amax, max=FP32_MAX)
    g_dec = 1.0 / g_enc
    base = (blocks.abs().amax(-1, keepdim=True) / 6.0) * g_enc
    picks = []
    for scale in (base, base * 1.5):  # map to 6, map to 4
        s = torch.clamp(scale, max=448.0).to(torch.float8_e4m3fn)
        enc_b = torch.clamp(1.0 / (s.float() * g_dec), max=FP32_MAX)
        q = _te_round(torch.clamp(blocks * enc_b, -6.0, 6.0))
        err = torch.zeros(rows, kp // 16)
        for i in range(16):  # FP32, element order
            diff = ((q[..., i] * s.float()[..., 0]) * amax) / (6.0 * bound) - blocks[..., i]
            err = err + (diff * diff if mode == "mse" else diff.abs())
        picks.append((q * s.float(), s.view(torch.uint8)[..., 0], err))
    (v6, s6, e6), (v4, s4, e4) = picks
    four = e4 < e6  # ties keep 6
    return torch.where(four[..., None], v4, v6).reshape(rows, kp), torch.where(four, s4, s6)


def _ours(x, **kw):
    q = nvfp4.quantize(x, op_order="te", **kw)
    return nvfp4.block_values(q), q.scales.view(torch.uint8), q.amax


@pytest.mark.parametrize("block_2d", [False, True])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_te_order_static6_equals_te_formula(case, block_2d):
    name, shape, make = case
    x = make(shape, _gen(0))
    values, scales, amax = _ours(x, block_2d=block_2d)
    want_values, want_scales, want_amax = _te_static6(x, 16 if block_2d else 1)
    rows = x.shape[0]
    assert torch.equal(values, want_values[:rows]) and torch.equal(scales, want_scales[:rows]), name
    assert amax.item() == want_amax.item()


@pytest.mark.parametrize("bound", [256.0, 448.0])
@pytest.mark.parametrize("mode", ["mae", "mse"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_te_order_four_over_six_equals_te_formula(case, mode, bound):
    name, shape, make = case
    x = make(shape, _gen(1))
    values, scales, _ = _ours(x, scale_rule=mode, scale_max=None if bound == 256.0 else bound)
    want_values, want_scales = _te_four_over_six_1d(x, mode, bound)
    assert torch.equal(values, want_values) and torch.equal(scales, want_scales), name


def test_a_448_bound_four_over_six_tensor_dequantizes_with_its_own_global_scale():
    x = torch.randn(64, 128, generator=_gen(5))
    q = nvfp4.quantize(x, scale_rule="mae", scale_max=448.0, op_order="te")
    assert q.scale_max == 448.0 and q.scales.float().max().item() == 448.0  # map-to-4 clamps at 448
    assert torch.equal(q.global_scale, q.amax / torch.tensor(6.0 * 448.0))
    assert ((nvfp4.dequantize(q) - x).norm() / x.norm()).item() < 0.1
    with pytest.raises(ValueError, match="scale_max=300"):
        nvfp4.quantize(x, scale_rule="mae", scale_max=300.0)


def test_the_op_orders_differ_only_at_exact_e4m3_ties():
    # Random data almost never separates them (nvfp4.md §1.4: 0 of 196,608 scales on N(0,1)) ...
    normal = torch.randn(512, 512, generator=_gen(2))
    for rule in ("static_6", "mse"):
        a = nvfp4.quantize(normal, scale_rule=rule).scales.view(torch.uint8)
        b = nvfp4.quantize(normal, scale_rule=rule, op_order="te").scales.view(torch.uint8)
        assert (a != b).float().mean().item() < 1e-3
    # ... but a block max whose unrounded scale is an exact midpoint between two E4M3 values does:
    # (m / 6) * enc and m * (enc * (1/6)) land one FP32 ulp apart, on either side of the tie.
    codes = nvfp4.e4m3_values(torch.arange(0, 127, dtype=torch.uint8))
    x = torch.zeros(126, 16)
    x[:, 0] = (codes[1:] + codes[:-1]) / 2 / 448  # with amax 1, enc = 2688: unrounded scale = midpoint
    x[0, 1] = 1.0
    a = nvfp4.quantize(x).scales.view(torch.uint8)
    b = nvfp4.quantize(x, op_order="te").scales.view(torch.uint8)
    differ = a != b
    assert 0 < differ.sum().item() < 126
    assert ((a.int() - b.int()).abs()[differ] == 1).all()  # one E4M3 code apart


def test_te_order_2d_four_over_six_sums_rows_then_a_tree():
    # 16x16 tiles: both orders sum (near-)exactly, so they agree but for near-ties; W and W^T still alike.
    w = torch.randn(64, 96, generator=_gen(4))
    a = nvfp4.quantize(w, scale_rule="mae", block_2d=True, op_order="te")
    b = nvfp4.quantize(w, scale_rule="mae", block_2d=True)
    assert (a.scales.view(torch.uint8) != b.scales.view(torch.uint8)).float().mean().item() < 1e-2
    t = nvfp4.quantize(w.T.contiguous(), scale_rule="static_6", block_2d=True, op_order="te")
    s = nvfp4.quantize(w, scale_rule="static_6", block_2d=True, op_order="te")
    assert torch.equal(nvfp4.dequantize(t).T, nvfp4.dequantize(s))
    with pytest.raises(ValueError, match="op_order='torchao'"):
        nvfp4.quantize(w, op_order="torchao")
