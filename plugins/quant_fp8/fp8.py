"""FP8 E4M3 row-wise numerics: quantize, dequantize, and the two GEMM paths (torch._scaled_mm, emulated).

Row-wise scaling (what torch._scaled_mm calls "RowWise"): every row of a 2-D operand gets one
fp32 scale s = amax(|row|) / 448 (448 = the largest finite E4M3 value), and
x_q = round_to_e4m3(x / s), round to nearest even, so x ~= x_q * s. Activations [M, K] get one
scale per token (computed on every call: dynamic), weights [N, K] one per output channel.

  y[m, n] = s_x[m] * s_w[n] * sum_k x_q[m, k] w_q[n, k]

- real:    torch._scaled_mm(x_q [M, K] row-major, w_q.t() [K, N] column-major,
           scale_a = s_x [M, 1] fp32, scale_b = s_w^T [1, N] fp32, out_dtype, use_fast_accum);
           cuBLAS/CUTLASS FP8 tensor cores on compute capability >= 8.9 (Ada, Hopper, Blackwell).
- emulate: the same products in fp32: (x_q * s_x) @ (w_q * s_w)^T.

E4M3 has 3 mantissa bits: a normal value rounds with relative error <= 2^-4; below the smallest
normal (2^-6 after scaling) the spacing is the subnormal step 2^-9, so the absolute error is
<= 2^-10 * s. A zero row gets scale 0 and quantizes to zeros.
"""
from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
REAL_MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0), Blackwell (10.x, 12.x)
ALIGN = 16  # _scaled_mm: K and N multiples of 16


def probe(device: torch.device) -> tuple[bool, str]:
    """Whether torch._scaled_mm's FP8 tensor-core path runs on `device`, and why not."""
    if device.type != "cuda":
        return False, f"the real FP8 path needs a CUDA GPU of compute capability >= 8.9; run.device is {device}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < REAL_MIN_CAPABILITY:
        return False, (f"compute capability {major}.{minor} has no FP8 tensor cores "
                       f"(torch._scaled_mm needs >= 8.9: Ada, Hopper or Blackwell)")
    return True, ""


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_q float8_e4m3fn [R, C], s fp32 [R, 1]) with x ~= x_q * s, one scale per row of x [R, C]."""
    if x.ndim != 2:
        raise ValueError(f"quantize_rows takes a 2-D tensor, got shape {tuple(x.shape)}")  # internal: callers flatten
    xf = x.float()
    scale = xf.abs().amax(dim=1, keepdim=True) / E4M3_MAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # a zero row stays zero
    q = (xf / safe).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)  # the cast rounds to nearest even
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q * scale in fp32."""
    return q.float() * scale


def matmul_emulated(qx: torch.Tensor, sx: torch.Tensor, qw: torch.Tensor, sw: torch.Tensor,
                    out_dtype: torch.dtype) -> torch.Tensor:
    """y [M, N] = (x_q s_x) (w_q s_w)^T, accumulated in fp32."""
    return (dequantize_rows(qx, sx) @ dequantize_rows(qw, sw).t()).to(out_dtype)


def matmul_scaled_mm(qx: torch.Tensor, sx: torch.Tensor, qw: torch.Tensor, sw: torch.Tensor,
                     out_dtype: torch.dtype, *, fast_accum: bool = False) -> torch.Tensor:
    """y [M, N] through torch._scaled_mm, row-wise scales; `qw` [N, K] row-major, passed transposed (column-major)."""
    return torch._scaled_mm(qx.contiguous(), qw.contiguous().t(), scale_a=sx.float().contiguous(),
                            scale_b=sw.float().reshape(1, -1).contiguous(), out_dtype=out_dtype,
                            use_fast_accum=fast_accum)


def matmul(qx: torch.Tensor, sx: torch.Tensor, qw: torch.Tensor, sw: torch.Tensor, out_dtype: torch.dtype, *,
           path: str, fast_accum: bool = False) -> torch.Tensor:
    """The GEMM of `path` ("real" | "emulate")."""
    if path == "real":
        return matmul_scaled_mm(qx, sx, qw, sw, out_dtype, fast_accum=fast_accum)
    return matmul_emulated(qx, sx, qw, sw, out_dtype)
