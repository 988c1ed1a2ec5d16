"""Triton kernels of the NVFP4 KV cache: quantize-on-write and one-launch window dequantization.

Layouts are those of `reference.py` (the PyTorch reference each kernel equals bit for bit).
Both kernels reproduce the core reference's FP32 op order exactly (longlive/quant/nvfp4.py):
divisions use `div_rn` (IEEE round-to-nearest; Triton's `/` is approximate on GPUs), E4M3 and
BF16 rounding are done with integer bit operations (the interpreter's float downcasts do not round
to nearest even), the 4/6 error sums add FP64 terms in the reference's pairwise order, and
launches pass `enable_fp_fusion=False` so no multiply-add is contracted into an FMA.
One program handles BLOCK_ROWS (token, head) rows of head_dim elements; head_dim is a constexpr,
any multiple of 16 (padded to a power of two inside the kernel and masked).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from longlive.quant import nvfp4
from longlive_plugins.kv_fp4.reference import check_head_dim, check_scale_rule, dequantize_output, slot_decode_scales

BLOCK_ROWS = 16


@triton.jit
def _e2m1_magnitude_code(a):
    """Round a >= 0 to an E2M1 magnitude index, ties to even, saturating (as nvfp4._RTNE_*)."""
    index = (a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
    index += (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32)
    return index + (a > 5.0).to(tl.int32)


@triton.jit
def _e2m1_value(code):
    """FP32 value of a 4-bit code (int32): 0, .5, 1, 1.5, 2, 3, 4, 6 and their negatives."""
    index = code & 7
    magnitude = tl.where(index < 4, index.to(tl.float32) * 0.5,
                         tl.where(index < 6, (index - 2).to(tl.float32), ((index - 4) * 2).to(tl.float32)))
    return tl.where((code & 8) != 0, -magnitude, magnitude)


@triton.jit
def _e4m3_bits(u):
    """float8_e4m3fn bits (int32) of u >= 0: clamp to 448, round to nearest even; NaN -> 0x7F."""
    c = tl.minimum(u, 448.0)
    sub = ((c * 512.0 + 8388608.0) - 8388608.0).to(tl.int32)  # rint(c / 2^-9) for c < 2^-6
    b = c.to(tl.int32, bitcast=True)
    b = (b + 0x7FFFF + ((b >> 20) & 1)) >> 20  # keep 3 mantissa bits, round to nearest even
    normal = (((b >> 3) & 0xFF) - 120) * 8 + (b & 7)  # FP32 exponent bias 127 -> E4M3 bias 7
    bits = tl.where(c < 0.015625, sub, normal)
    return tl.where(u != u, 0x7F, bits)


@triton.jit
def _e4m3_value(bits):
    """FP32 value of float8_e4m3fn bits (int32, sign bit 0)."""
    normal = ((((bits >> 3) + 120) << 23) | ((bits & 7) << 20)).to(tl.float32, bitcast=True)
    value = tl.where(bits < 8, bits.to(tl.float32) * 0.001953125, normal)
    return tl.where(bits == 0x7F, float("nan"), value)


@triton.jit
def _candidate(xe, xo, unrounded, decode):
    """One block-scale candidate: (scale bits, its FP32 value, even codes, odd codes)."""
    bits = _e4m3_bits(unrounded)
    scale = _e4m3_value(bits)
    keep = (scale != 0)[:, :, None]  # a zero scale zeroes the block; avoid 1/0 on its lanes
    safe = tl.where(scale != 0, decode * scale, 1.0)
    inverse = tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), safe)[:, :, None]
    se = tl.where(keep, xe * inverse, 0.0)
    so = tl.where(keep, xo * inverse, 0.0)
    ce = _e2m1_magnitude_code(tl.abs(se)) | ((se < 0).to(tl.int32) << 3)
    co = _e2m1_magnitude_code(tl.abs(so)) | ((so < 0).to(tl.int32) << 3)
    return bits, scale, ce, co


@triton.jit
def _squared_error(xe, xo, ce, co, scale, amax, both_max, BLOCK_ROWS: tl.constexpr, NB: tl.constexpr):
    """Per-block sum of squared dequantization errors: FP32 terms, FP64 pairwise sum."""
    s = scale[:, :, None]
    de = tl.math.div_rn((_e2m1_value(ce) * s) * amax, both_max) - xe
    do = tl.math.div_rn((_e2m1_value(co) * s) * amax, both_max) - xo
    total = (de * de).to(tl.float64) + (do * do).to(tl.float64)  # [R, NB, 8]: pairs (2i, 2i+1)
    total = tl.sum(tl.reshape(total, (BLOCK_ROWS, NB, 4, 2)), axis=3)
    total = tl.sum(tl.reshape(total, (BLOCK_ROWS, NB, 2, 2)), axis=3)
    return tl.sum(total, axis=2)


@triton.jit
def _quantize_chunk_kernel(
    x_ptr, amax_ptr, values_ptr, scales_ptr,
    n_rows, tokens, heads,
    sx_b, sx_t, sx_h, sv_b, sv_t, sv_h, ss_b, ss_t, ss_h,
    NUM_BLOCKS: tl.constexpr, NB: tl.constexpr, BLOCK_ROWS: tl.constexpr,
    VALUE_MAX: tl.constexpr, SCALE_MAX: tl.constexpr, FOUR_OVER_SIX: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)  # (b, t, h) rows
    h = rows % heads
    t = (rows // heads) % tokens
    b = rows // (heads * tokens)
    block = tl.arange(0, NB)  # [NB] 16-element blocks of head_dim (NB = NUM_BLOCKS padded to 2^k)
    pair = tl.arange(0, 8)  # element pairs (2i, 2i+1) of a block
    ok = (rows < n_rows)[:, None] & (block < NUM_BLOCKS)[None, :]  # [R, NB]
    element = (block[:, None] * 16 + pair[None, :] * 2)[None, :, :]  # [1, NB, 8] even elements
    x_row = (b * sx_b + t * sx_t + h * sx_h)[:, None, None]
    xe = tl.load(x_ptr + x_row + element, mask=ok[:, :, None], other=0.0).to(tl.float32)  # [R, NB, 8]
    xo = tl.load(x_ptr + x_row + element + 1, mask=ok[:, :, None], other=0.0).to(tl.float32)

    amax = tl.load(amax_ptr)
    both_max = tl.full((), VALUE_MAX * SCALE_MAX, tl.float32)
    encode = tl.math.div_rn(both_max, tl.where(amax == 0, 1.0, amax))  # amax 0: every scale is 0
    decode = tl.math.div_rn(tl.full((), 1.0, tl.float32), encode)
    block_max = tl.maximum(tl.max(tl.abs(xe), axis=2), tl.max(tl.abs(xo), axis=2))  # [R, NB]
    has_nan = tl.max(((xe != xe) | (xo != xo)).to(tl.int32), axis=2) > 0
    block_max = tl.where(has_nan, float("nan"), block_max)  # GPU max drops NaN; torch keeps it
    unrounded = tl.math.div_rn(block_max, tl.full(block_max.shape, VALUE_MAX, tl.float32)) * encode
    unrounded = tl.where(amax == 0, 0.0, unrounded)

    bits, scale, ce, co = _candidate(xe, xo, unrounded, decode)
    if FOUR_OVER_SIX:  # mse: also try max -> 4 (scale x 1.5); keep it if strictly better
        bits4, scale4, ce4, co4 = _candidate(xe, xo, unrounded * 1.5, decode)
        err6 = _squared_error(xe, xo, ce, co, scale, amax, both_max, BLOCK_ROWS, NB)
        err4 = _squared_error(xe, xo, ce4, co4, scale4, amax, both_max, BLOCK_ROWS, NB)
        pick4 = err4 < err6
        bits = tl.where(pick4, bits4, bits)
        ce = tl.where(pick4[:, :, None], ce4, ce)
        co = tl.where(pick4[:, :, None], co4, co)

    packed = (ce | (co << 4)).to(tl.uint8)  # [R, NB, 8], element 2i in the low nibble
    v_row = (b * sv_b + t * sv_t + h * sv_h)[:, None, None]
    tl.store(values_ptr + v_row + (block[:, None] * 8 + pair[None, :])[None, :, :], packed, mask=ok[:, :, None])
    s_row = (b * ss_b + t * ss_t + h * ss_h)[:, None]
    tl.store(scales_ptr + s_row + block[None, :], bits.to(tl.uint8), mask=ok)


@triton.jit
def _dequantize_slots_kernel(
    values_ptr, scales_ptr, decode_ptr, slots_ptr, out_ptr,
    n_rows, n_visible, tokens, heads,
    sv_s, sv_b, sv_t, sv_h, ss_s, ss_b, ss_t, ss_h, so_b, so_t, so_h,
    HALF_D: tl.constexpr, HALF_D_P2: tl.constexpr, BLOCK_ROWS: tl.constexpr, OUT_BF16: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)  # output rows
    row_ok = rows < n_rows  # rows of [B, n_visible, T, H] = the output [B, n_visible*T, H, D]
    h = rows % heads
    t = (rows // heads) % tokens
    v = (rows // (heads * tokens)) % n_visible
    b = rows // (heads * tokens * n_visible)
    slot = tl.load(slots_ptr + v, mask=row_ok, other=0).to(tl.int64)
    decode = tl.load(decode_ptr + slot, mask=row_ok, other=0.0)[:, None]  # [R, 1]
    byte = tl.arange(0, HALF_D_P2)[None, :]  # [1, D/2 padded]
    ok = row_ok[:, None] & (byte < HALF_D)
    v_row = (slot * sv_s + b * sv_b + t * sv_t + h * sv_h)[:, None]
    s_row = (slot * ss_s + b * ss_b + t * ss_t + h * ss_h)[:, None]
    packed = tl.load(values_ptr + v_row + byte, mask=ok, other=0).to(tl.int32)  # [R, D/2]
    scale = _e4m3_value(tl.load(scales_ptr + s_row + byte // 8, mask=ok, other=0).to(tl.int32))
    low = (_e2m1_value(packed & 15) * scale) * decode  # elements 2i
    high = (_e2m1_value(packed >> 4) * scale) * decode  # elements 2i + 1
    out = out_ptr + (b * so_b + (v * tokens + t) * so_t + h * so_h)[:, None] + 2 * byte
    if OUT_BF16:  # round to nearest even by hand; `out_ptr` is the int16 view of a bf16 tensor
        low_bits = low.to(tl.uint32, bitcast=True)
        high_bits = high.to(tl.uint32, bitcast=True)
        low_bits = (low_bits + 0x7FFF + ((low_bits >> 16) & 1)) >> 16
        high_bits = (high_bits + 0x7FFF + ((high_bits >> 16) & 1)) >> 16
        low_bits = tl.where(low != low, 0x7FC0, low_bits)
        high_bits = tl.where(high != high, 0x7FC0, high_bits)
        tl.store(out, low_bits.to(tl.int16), mask=ok)
        tl.store(out + 1, high_bits.to(tl.int16), mask=ok)
    else:
        tl.store(out, low, mask=ok)
        tl.store(out + 1, high, mask=ok)


def _check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(f"kv_fp4: {name} must be contiguous in its last dim (stride {t.stride()})")


def quantize_chunk_triton(
    x: torch.Tensor,
    amax: torch.Tensor,
    *,
    scale_rule: str,
    values_out: torch.Tensor | None = None,
    scales_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of `reference.quantize_chunk_reference` (same arguments, same bits)."""
    check_scale_rule(scale_rule)
    batch, tokens, heads, head_dim = x.shape
    check_head_dim(head_dim)
    if values_out is None or scales_out is None:
        values_out = torch.empty(batch, tokens, heads, head_dim // 2, dtype=torch.uint8, device=x.device)
        scales_out = torch.empty(batch, tokens, heads, head_dim // 16, dtype=torch.uint8, device=x.device)
    for name, t in (("x", x), ("values_out", values_out), ("scales_out", scales_out)):
        _check_last_dim_contiguous(name, t)
    value_max, scale_max = nvfp4.scale_rule_constants(scale_rule)
    n_rows = batch * tokens * heads
    num_blocks = head_dim // 16
    _quantize_chunk_kernel[(triton.cdiv(n_rows, BLOCK_ROWS),)](
        x, amax.reshape(1).float(), values_out, scales_out,
        n_rows, tokens, heads,
        *x.stride()[:3], *values_out.stride()[:3], *scales_out.stride()[:3],
        NUM_BLOCKS=num_blocks, NB=triton.next_power_of_2(num_blocks), BLOCK_ROWS=BLOCK_ROWS,
        VALUE_MAX=value_max, SCALE_MAX=scale_max, FOUR_OVER_SIX=scale_rule == "mse",
        enable_fp_fusion=False,
    )
    return values_out, scales_out


def dequantize_slots_triton(
    values: torch.Tensor,
    scales: torch.Tensor,
    amax: torch.Tensor,
    slots: torch.Tensor,
    *,
    scale_rule: str,
    out_dtype: torch.dtype = torch.bfloat16,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version of `reference.dequantize_slots_reference`: every visible slot, one launch.

    `out`: write into this [B, n*T, H, D] tensor (any outer strides, e.g. the front of an attention
    window buffer) instead of a new one; its dtype is the output dtype.
    """
    check_scale_rule(scale_rule)
    _, batch, tokens, heads, half_d = values.shape
    n_visible = slots.numel()
    out = dequantize_output(out, (batch, n_visible * tokens, heads, half_d * 2), out_dtype, values.device)
    out_dtype = out.dtype
    if out_dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"kv_fp4: out_dtype={out_dtype} is not supported; use torch.bfloat16 or torch.float32")
    for name, t in (("values", values), ("scales", scales), ("out", out)):
        _check_last_dim_contiguous(name, t)
    n_rows = batch * n_visible * tokens * heads
    if n_rows == 0:
        return out
    _dequantize_slots_kernel[(triton.cdiv(n_rows, BLOCK_ROWS),)](
        values, scales, slot_decode_scales(amax, scale_rule), slots.to(torch.int32),
        out.view(torch.int16) if out_dtype == torch.bfloat16 else out,
        n_rows, n_visible, tokens, heads,
        *values.stride()[:4], *scales.stride()[:4], *out.stride()[:3],
        HALF_D=half_d, HALF_D_P2=triton.next_power_of_2(half_d), BLOCK_ROWS=BLOCK_ROWS,
        OUT_BF16=out_dtype == torch.bfloat16,
        enable_fp_fusion=False,
    )
    return out
