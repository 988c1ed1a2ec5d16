"""The fouroversix adapter: explicit PyTorch path equals fouroversix's own backend; RHT on any device; GEMM exactness."""
from __future__ import annotations

import fouroversix  # a missing fouroversix fails these tests (README: the test install command installs it)
import pytest
import torch
from fouroversix import QuantizationConfig, dequantize, quantize_to_fp4

from longlive_plugins.quant_4o6 import backend

SHAPES = [(128, 64), (100, 80), (33, 16), (256, 192), (7, 48)]  # padding to 128 rows / 64 columns included


def _data(shape, kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if kind == "outliers":
        x[:, :: max(1, shape[1] // 8)] *= 30
    elif kind == "zeros":
        x[: shape[0] // 2] = 0
    elif kind == "wide":
        x *= torch.exp(2 * torch.randn(shape[0], 1, generator=g))
    return x


@pytest.mark.parametrize("rule", backend.SCALE_RULES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["normal", "outliers", "zeros", "wide"])
def test_emulated_quantize_is_fouroversix_pytorch_backend(rule, shape, kind):
    assert fouroversix.__version__ == "1.0.5"
    x = _data(shape, kind)
    ours = backend.quantize(x, rule=rule, path="emulate")
    theirs = quantize_to_fp4(x, QuantizationConfig(backend="pytorch", scale_rule=rule))
    assert torch.equal(ours.values, theirs.values)
    assert torch.equal(ours.scale_factors.view(torch.uint8), theirs.scale_factors.view(torch.uint8))
    assert torch.equal(ours.amax, theirs.amax) and ours.original_shape == tuple(theirs.original_shape)
    assert ours.padded_shape == theirs.padded_shape


def test_2d_blocks_make_w_and_w_transposed_quantize_alike():
    w = _data((96, 64), "wide")
    q = backend.dequantize(backend.quantize(w, rule="static_6", path="emulate", block_2d=True))
    qt = backend.dequantize(backend.quantize(w.t().contiguous(), rule="static_6", path="emulate", block_2d=True))
    assert torch.equal(q.t(), qt)


def test_rht_runs_on_the_cpu_and_equals_rotating_by_hand():
    from fouroversix.quantize.utils import get_rht_matrix

    x = _data((64, 128), "outliers").bfloat16()
    had = get_rht_matrix(device="cpu")
    assert torch.allclose(had.float() @ had.float().t(), torch.eye(16), atol=1e-6)  # orthogonal
    rotated = (x.reshape(-1, 16) @ had).reshape_as(x)
    a = backend.quantize(x, rule="mse", path="emulate", rht=True)
    b = backend.quantize(rotated, rule="mse", path="emulate")
    assert torch.equal(a.values, b.values) and torch.equal(a.scale_factors.view(torch.uint8),
                                                           b.scale_factors.view(torch.uint8))


def test_rht_cancels_in_the_wgrad_product():
    g = torch.Generator().manual_seed(0)
    dy, x = torch.randn(48, 256, generator=g), torch.randn(32, 256, generator=g)  # [out, tokens], [in, tokens]
    plain = backend.matmul(backend.quantize(dy, rule="mse", path="emulate"),
                           backend.quantize(x, rule="mse", path="emulate"), path="emulate")
    rotated = backend.matmul(backend.quantize(dy, rule="mse", path="emulate", rht=True),
                             backend.quantize(x, rule="mse", path="emulate", rht=True), path="emulate")
    exact = dy @ x.t()
    for approx in (plain, rotated):
        assert 0.05 < (approx - exact).norm() / exact.norm() < 0.2


def test_emulated_gemm_is_the_float64_product_of_the_dequantized_operands():
    a, b = _data((70, 96), "wide", 1), _data((40, 96), "normal", 2)
    qa, qb = backend.quantize(a, rule="mse", path="emulate"), backend.quantize(b, rule="static_6", path="emulate")
    out = backend.matmul(qa, qb, path="emulate")
    exact = dequantize(qa, torch.float64, backend="pytorch", intermediate_dtype=torch.float64) @ \
        dequantize(qb, torch.float64, backend="pytorch", intermediate_dtype=torch.float64).t()
    assert out.shape == (70, 40) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())


def _subnormal_scale_blocks(x: torch.Tensor, rule: str) -> torch.Tensor:
    """[rows, cols] True inside 1x16 blocks whose E4M3 scale (either 4/6 candidate) may be subnormal."""
    scale_max = 448.0 if rule in ("static_6", "static_4") else 256.0
    rows, cols = x.shape
    blocks = torch.nn.functional.pad(x.float(), (0, -cols % 16)).reshape(rows, -1, 16)
    unrounded = blocks.abs().amax(-1) * scale_max * 1.5 / x.float().abs().max()
    return (unrounded < 2.0**-6).repeat_interleave(16, -1)[:, :cols]


@pytest.mark.parametrize("rule", backend.SCALE_RULES)
@pytest.mark.parametrize("kind", ["normal", "outliers", "zeros", "wide"])
def test_fake_quantize_is_quantize_then_dequantize(rule, kind):
    """The emulated forward's fast path against fouroversix's PyTorch reference, fresh inputs: equal
    bit for bit except in blocks with a subnormal scale, where fouroversix's encoder wraps values
    above 6 and we saturate (backend.py), which is never further from x."""
    for shape, dtype in [((100, 80), torch.float32), ((33, 16), torch.bfloat16), ((256, 320), torch.float32),
                         ((5, 24), torch.bfloat16)]:
        x = _data(shape, kind, seed=int(torch.randint(0, 2**31, ())) if kind != "wide" else 3).to(dtype)
        ours = backend.fake_quantize(x, rule=rule)
        theirs = backend.dequantize(backend.quantize(x, rule=rule, path="emulate"))
        assert ours.dtype == torch.float32 and ours.shape == x.shape and not ours.isnan().any()
        differs = ours != theirs
        assert not (differs & ~_subnormal_scale_blocks(x, rule)).any()
        if rule in ("static_6", "static_4"):
            assert ((ours - x.float()).abs() <= (theirs - x.float()).abs())[differs].all()
        w = _data((40, shape[1]), "normal", 5).to(dtype)
        q_w = backend.quantize(w, rule=rule, path="emulate")
        fast = ours @ backend.dequantize(q_w).t()
        reference = backend.matmul(backend.quantize(x, rule=rule, path="emulate"), q_w, path="emulate")
        if not differs.any():
            assert torch.equal(fast, reference)


def test_wide_inputs_hit_the_subnormal_scale_case():
    x = _data((256, 192), "wide", 3)
    assert (backend.fake_quantize(x, rule="static_6") != backend.dequantize(
        backend.quantize(x, rule="static_6", path="emulate"))).any()  # the case the test above excuses occurs


def test_stochastic_rounding_is_unbiased():
    x = _data((128, 64), "normal")
    draws = torch.stack([backend.dequantize(backend.quantize(x, rule="static_6", path="emulate",
                                                             round_style="stochastic")) for _ in range(64)])
    nearest = backend.dequantize(backend.quantize(x, rule="static_6", path="emulate"))
    bias_sr = (draws.mean(0) - x).abs().mean()
    assert bias_sr < 0.5 * (nearest - x).abs().mean()  # averaging SR draws converges to x, nearest does not


def test_probe_on_the_cpu_says_why():
    ok, why = backend.probe(torch.device("cpu"))
    assert not ok and "Blackwell" in why and "cpu" in why


def test_packed_shapes_follow_the_padding():
    assert backend.packed_shapes(3072, 14336) == ((3072, 7168), 3072 * 14336 // 16)
    q = backend.quantize(torch.randn(100, 80), rule="mse", path="emulate")
    assert backend.packed_shapes(100, 80) == (tuple(q.values.shape), q.scale_factors.numel())
