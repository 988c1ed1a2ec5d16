"""OCP MXFP4 numerics (OCP Microscaling Formats (MX) v1.0, §5 and §6.3): E2M1 elements, one E8M0 scale per 32.

A block is 32 consecutive elements along a row. Its shared scale is a power of two,
X = 2^(floor(log2(amax)) - emax_elem) with emax_elem = 2 for E2M1 (the exponent of its largest
normal, 6 = 1.5 * 2^2), stored as E8M0 (an unsigned byte: biased exponent, bias 127). Elements
are x / X rounded to the nearest E2M1 value (ties to even) and clamped to +-6: amax / X lies in
[4, 8), so the block's largest values may saturate at 6.

E2M1 magnitudes by 3-bit code: 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign. Two codes pack
into one byte (element 2i in the low nibble, 2i+1 in the high one).
"""
from __future__ import annotations

import torch

BLOCK = 32
E2M1_EMAX = 2  # exponent of E2M1's largest normal value (6 = 1.5 * 2^2)
E2M1_MAX = 6.0
E8M0_BIAS = 127
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """uint8 E2M1 codes (sign in bit 3) of v, rounded to nearest, ties to the even code, saturating at 6."""
    a = v.abs()
    # Midpoints between neighbours; at a tie the even code wins: 0.25 -> 0, 0.75 -> 1, 1.25 -> 1,
    # 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4 (">" rounds a tie down, ">=" up).
    mag = ((a > 0.25).to(torch.uint8) + (a >= 0.75) + (a > 1.25) + (a >= 1.75) + (a > 2.5) + (a >= 3.5) + (a > 5))
    return mag | ((v < 0).to(torch.uint8) << 3)


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    """fp32 values of uint8 E2M1 codes."""
    table = torch.tensor(E2M1_VALUES, device=codes.device)
    mag = table[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -mag, mag)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 [R, C/2], E8M0 scales uint8 [R, C/32]) of x [R, C]; C a multiple of 32."""
    rows, cols = x.shape
    if cols % BLOCK:
        raise ValueError(f"MXFP4 rows need a multiple of {BLOCK} elements, got {cols}")  # internal: applier checks
    blocks = x.float().reshape(rows, cols // BLOCK, BLOCK)
    amax = blocks.abs().amax(-1)
    _, e = torch.frexp(amax)  # amax = m 2^e, m in [0.5, 1): floor(log2 amax) = e - 1 exactly
    exp = torch.where(amax > 0, e - 1 - E2M1_EMAX, torch.full_like(e, -E8M0_BIAS)).clamp(-E8M0_BIAS, E8M0_BIAS)
    codes = e2m1_codes(blocks / torch.ldexp(torch.ones_like(amax), exp)[..., None]).reshape(rows, cols)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed, (exp + E8M0_BIAS).to(torch.uint8)


def dequantize(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """fp32 [R, C] from `quantize`'s output."""
    rows = packed.shape[0]
    codes = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(rows, -1)
    scale = torch.ldexp(torch.ones(scales.shape, device=scales.device), scales.long() - E8M0_BIAS)
    return (e2m1_values(codes).reshape(rows, -1, BLOCK) * scale[..., None]).reshape(rows, -1)


def fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """dequantize(quantize(x)) in fp32, for x [..., C]."""
    flat = x.reshape(-1, x.shape[-1])
    return dequantize(*quantize(flat)).reshape(x.shape)
