"""kv_fp4 kernels under the Triton interpreter against their PyTorch reference: equal bit for bit.

Not collected directly (the name does not match test_*.py): `test_kernels.py` runs this file in a
child pytest with TRITON_INTERPRET=1. `triton.jit` picks a GPU kernel or an interpreted one when
the decorator runs, including for triton's own `tl.max`/`tl.sum` (decorated when `triton` is first
imported), so the variable must be set before anything in the process imports triton; in a full
test run other tests (torch's flex attention) import it first.
"""
from __future__ import annotations

import os

import pytest
import torch

from longlive.quant import nvfp4
from longlive_plugins.kv_fp4 import reference

if os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("interpreted_kernels.py needs TRITON_INTERPRET=1 before triton is imported; "
                       "run it through plugins/kv_fp4/tests/test_kernels.py")


@pytest.fixture(scope="module")
def kernels():
    from longlive_plugins.kv_fp4 import kernels as module

    assert type(module._quantize_chunk_kernel).__name__ == "InterpretedFunction"
    return module


def _chunk(kind: str, shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if kind == "wide":  # per-token magnitudes over ~e^+-12: E4M3-subnormal block scales
        x = x * torch.exp(4 * torch.randn(*shape[:-1], 1, generator=g))
    elif kind == "outliers":
        x[..., 3] *= 40
    elif kind == "zeros":
        x = torch.zeros(shape)
    elif kind == "ties":  # grid values and midpoints times powers of two
        levels = torch.tensor([0.25, 0.5, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
        x = levels[torch.randint(0, 9, shape, generator=g)] * torch.exp2(torch.randint(-3, 3, shape, generator=g).float())
    return x.to(dtype)


def _assert_quantize_equal(kernels, x, amax, rule):
    got = kernels.quantize_chunk_triton(x, amax, scale_rule=rule)
    want = reference.quantize_chunk_reference(x, amax, scale_rule=rule)
    assert torch.equal(got[0], want[0]), f"{(got[0] != want[0]).sum()} value bytes differ"
    assert torch.equal(got[1], want[1]), f"{(got[1] != want[1]).sum()} scales differ"
    return got


@pytest.mark.parametrize("rule", ["static_6", "mse"])
@pytest.mark.parametrize("head_dim", [16, 80, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_quantize_kernel_equals_reference(kernels, rule, head_dim, dtype):
    x = _chunk("normal", (2, 7, 3, head_dim), dtype)  # batch 2, as CFG's doubled batch
    _assert_quantize_equal(kernels, x, x.float().abs().amax(), rule)


@pytest.mark.parametrize("rule", ["static_6", "mse"])
@pytest.mark.parametrize("kind", ["wide", "outliers", "zeros", "ties"])
def test_quantize_kernel_equals_reference_on_hard_data(kernels, rule, kind):
    x = _chunk(kind, (1, 9, 4, 64), torch.float32, seed=1)
    _assert_quantize_equal(kernels, x, x.abs().amax(), rule)
    _assert_quantize_equal(kernels, x, x.abs().amax() * 3 + 1, rule)  # a slot amax above the data's


def test_quantize_kernel_nan_matches_reference_and_never_dequantizes_finite(kernels):
    x = _chunk("normal", (1, 4, 2, 32), torch.float32)
    x[0, 1, 1, 5] = float("nan")
    for amax in (x.abs().amax(), torch.tensor(4.0)):  # NaN amax, and a finite slot amax
        values, scales = _assert_quantize_equal(kernels, x, amax, "mse")
        out = reference.dequantize_slots_reference(values[None], scales[None], amax.reshape(1), torch.tensor([0]),
                                                   scale_rule="mse", out_dtype=torch.float32)
        assert torch.isnan(out).any()


def test_quantize_kernel_writes_into_a_storage_slot_in_place(kernels):
    slots, batch, tokens, heads, head_dim = 3, 2, 5, 3, 48
    values = torch.full((slots, batch, tokens, heads, head_dim // 2), 0xAB, dtype=torch.uint8)
    scales = torch.full((slots, batch, tokens, heads, head_dim // 16), 0xCD, dtype=torch.uint8)
    x = _chunk("normal", (batch, tokens, heads, head_dim), torch.bfloat16)
    x_strided = torch.empty(batch, heads, tokens, head_dim, dtype=torch.bfloat16).transpose(1, 2)
    x_strided.copy_(x)  # [B, T, H, D] with non-contiguous outer strides
    amax = x.float().abs().amax()
    kernels.quantize_chunk_triton(x_strided, amax, scale_rule="mse", values_out=values[1], scales_out=scales[1])
    want_values, want_scales = reference.quantize_chunk_reference(x, amax, scale_rule="mse")
    assert torch.equal(values[1], want_values) and torch.equal(scales[1], want_scales)
    assert (values[[0, 2]] == 0xAB).all() and (scales[[0, 2]] == 0xCD).all()


def _storage(rule, slots=5, batch=2, tokens=6, heads=3, head_dim=64, seed=0):
    xs = [_chunk("normal", (batch, tokens, heads, head_dim), torch.float32, seed=seed + i) * (i + 1) for i in range(slots)]
    amax = torch.stack([x.abs().amax() for x in xs])  # [S]
    quantized = [reference.quantize_chunk_reference(x, a, scale_rule=rule) for x, a in zip(xs, amax)]
    values = torch.stack([q[0] for q in quantized])  # [S, B, T, H, D/2]
    scales = torch.stack([q[1] for q in quantized])  # [S, B, T, H, D/16]
    return xs, values, scales, amax


@pytest.mark.parametrize("rule", ["static_6", "mse"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("slot_list", [[3, 0, 4], [2], [4, 3, 2, 1, 0]])
def test_dequantize_kernel_equals_reference_in_one_launch(kernels, rule, out_dtype, slot_list):
    xs, values, scales, amax = _storage(rule)
    slots = torch.tensor(slot_list)
    got = kernels.dequantize_slots_triton(values, scales, amax, slots, scale_rule=rule, out_dtype=out_dtype)
    want = reference.dequantize_slots_reference(values, scales, amax, slots, scale_rule=rule, out_dtype=out_dtype)
    assert got.shape == (2, 6 * len(slot_list), 3, 64) and got.dtype == out_dtype and got.is_contiguous()
    bits = torch.int16 if out_dtype == torch.bfloat16 else torch.int32
    assert torch.equal(got.view(bits), want.view(bits))
    # and it is the core's quantize-dequantize of the chunks, in the order asked
    core = torch.cat([nvfp4.dequantize(nvfp4.quantize(xs[s], scale_rule=rule)) for s in slot_list], dim=1)
    assert torch.equal(got, core.to(out_dtype))


@pytest.mark.parametrize("head_dim", [16, 80, 128])
def test_dequantize_kernel_any_head_dim_and_strided_storage(kernels, head_dim):
    _, values, scales, amax = _storage("static_6", slots=3, batch=1, tokens=4, heads=2, head_dim=head_dim)
    # the storage of all layers [L, S, ...]; one layer's [S, ...] view is strided in its outer dims
    layers = 2
    values_all = torch.stack([values] * layers, dim=1)[:, 1]  # [S, B, T, H, D/2], non-standard strides
    scales_all = torch.stack([scales] * layers, dim=1)[:, 1]
    slots = torch.tensor([1, 2])
    got = kernels.dequantize_slots_triton(values_all, scales_all, amax, slots, scale_rule="static_6")
    want = reference.dequantize_slots_reference(values, scales, amax, slots, scale_rule="static_6")
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_dequantize_kernel_bf16_rounding_matches_torch_at_ties(kernels):
    # scales and decode scales chosen so q * s * g lands on exact bf16 ties and near-ties
    values = torch.randint(0, 256, (1, 1, 64, 1, 8), generator=torch.Generator().manual_seed(3)).to(torch.uint8)
    scales = torch.full((1, 1, 64, 1, 1), 0x38, dtype=torch.uint8)  # 1.0
    for amax in (1 + 2.0**-8, 1 + 3 * 2.0**-9, 1 - 2.0**-10, 3.0):
        a = torch.tensor([amax * 6 * 448])
        got = kernels.dequantize_slots_triton(values, scales, a, torch.tensor([0]), scale_rule="static_6")
        want = reference.dequantize_slots_reference(values, scales, a, torch.tensor([0]), scale_rule="static_6")
        assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_empty_visible_set_gives_an_empty_window(kernels):
    _, values, scales, amax = _storage("static_6", slots=2)
    out = kernels.dequantize_slots_triton(values, scales, amax, torch.tensor([], dtype=torch.long), scale_rule="static_6")
    assert out.shape == (2, 0, 3, 64)


def test_bad_arguments_fail_with_one_line(kernels):
    x = torch.zeros(1, 2, 2, 72)
    with pytest.raises(ValueError, match="head_dim=72 must be a positive multiple of 16"):
        kernels.quantize_chunk_triton(x, torch.tensor(1.0), scale_rule="static_6")
    with pytest.raises(ValueError, match="scale_rule='mae' is not supported"):
        reference.quantize_chunk_reference(torch.zeros(1, 2, 2, 64), torch.tensor(1.0), scale_rule="mae")


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_dequantize_kernel_writes_into_the_front_of_a_window_buffer(kernels, out_dtype):
    xs, values, scales, amax = _storage("mse", slots=4, batch=2, tokens=5, heads=3, head_dim=32)
    slots = torch.tensor([3, 1])
    window = torch.full((2, 3 * 5, 3, 32), 7.0, dtype=out_dtype)  # 2 slots dequantized + the chunk's own 5 tokens
    front = window[:, :10]  # batch stride 15*3*32: not contiguous
    got = kernels.dequantize_slots_triton(values, scales, amax, slots, scale_rule="mse", out=front)
    assert got.data_ptr() == window.data_ptr()
    want = reference.dequantize_slots_reference(values, scales, amax, slots, scale_rule="mse", out_dtype=out_dtype)
    assert torch.equal(window[:, :10], want) and (window[:, 10:] == 7).all()
    ref_window = torch.full_like(window, 7.0)
    reference.dequantize_slots_reference(values, scales, amax, slots, scale_rule="mse", out=ref_window[:, :10])
    assert torch.equal(ref_window, window)
    with pytest.raises(ValueError, match=r"out is \(2, 9, 3, 32\)"):
        kernels.dequantize_slots_triton(values, scales, amax, slots, scale_rule="mse", out=window[:, :9])
