"""PyTorch reference of the kv_fp4 kernels, built on the core NVFP4 reference (any device).

Tensor layouts shared with `kernels.py` (D = head_dim, a multiple of 16):
    chunk K or V           [B, T, H, D]       bf16/fp16/fp32, T tokens of one chunk
    slot values            [B, T, H, D/2]     uint8, two E2M1 codes a byte, element 2i low nibble
    slot scales            [B, T, H, D/16]    uint8 bits of float8_e4m3fn, one per 16 elements
    storage values/scales  [S, B, T, H, ...]  S slots, the above stacked (any strides outside D)
    amax                   [S]                fp32, one per slot (a chunk's max|x|, per layer and K/V)
    dequantized window     [B, n*T, H, D]     the n visible slots in the order given, contiguous
"""
from __future__ import annotations

import torch

from longlive.quant import nvfp4

KV_SCALE_RULES = ("static_6", "mse")  # the kernels implement these two


def check_scale_rule(scale_rule: str) -> None:
    if scale_rule not in KV_SCALE_RULES:
        raise ValueError(f"kv_fp4: scale_rule={scale_rule!r} is not supported; use one of {KV_SCALE_RULES}")


def check_head_dim(head_dim: int) -> None:
    if head_dim <= 0 or head_dim % nvfp4.BLOCK_SIZE:
        raise ValueError(f"kv_fp4: head_dim={head_dim} must be a positive multiple of {nvfp4.BLOCK_SIZE}")


def dequantize_output(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
    """The tensor a dequantization writes: `out` checked against `shape`, or a new one of `dtype`."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != tuple(shape) or out.device != torch.device(device):
        raise ValueError(f"kv_fp4: out is {tuple(out.shape)} on {out.device}, the slots need {tuple(shape)} "
                         f"on {device}")
    return out


def slot_decode_scales(amax: torch.Tensor, scale_rule: str) -> torch.Tensor:
    """FP32 [S] global decode scales g = amax / (V * S) of every slot."""
    return nvfp4.global_decode_scale(amax, scale_rule)


def quantize_chunk_reference(
    x: torch.Tensor,
    amax: torch.Tensor,
    *,
    scale_rule: str,
    values_out: torch.Tensor | None = None,
    scales_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize one chunk x [B, T, H, D] with the slot's amax (FP32, one element).

    Returns (values uint8 [B, T, H, D/2], scales uint8 [B, T, H, D/16]); when given, the output
    buffers (e.g. a slot of the storage) are written in place and returned.
    """
    check_scale_rule(scale_rule)
    check_head_dim(x.shape[-1])
    q = nvfp4.quantize(x, scale_rule=scale_rule, amax=amax.reshape(()))
    values, scales = q.packed, q.scales.view(torch.uint8)
    if values_out is None or scales_out is None:
        return values, scales
    values_out.copy_(values)
    scales_out.copy_(scales)
    return values_out, scales_out


def dequantize_slots_reference(
    values: torch.Tensor,
    scales: torch.Tensor,
    amax: torch.Tensor,
    slots: torch.Tensor,
    *,
    scale_rule: str,
    out_dtype: torch.dtype = torch.bfloat16,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dequantize the visible slots `slots` (int [n]) of a storage into [B, n*T, H, D] (into `out` if given)."""
    check_scale_rule(scale_rule)
    if out is not None:
        _, batch, tokens, heads, half_d = values.shape
        out = dequantize_output(out, (batch, slots.numel() * tokens, heads, half_d * 2), out_dtype, values.device)
        out.copy_(dequantize_slots_reference(values, scales, amax, slots, scale_rule=scale_rule, out_dtype=out.dtype))
        return out
    parts = []
    for slot in slots.tolist():
        _, batch, tokens, heads, half_d = values.shape
        q = nvfp4.NVFP4Tensor(
            packed=values[slot],
            scales=scales[slot].view(torch.float8_e4m3fn),
            amax=amax[slot].float(),
            shape=(batch, tokens, heads, half_d * 2),
            scale_rule=scale_rule,
        )
        parts.append(nvfp4.dequantize(q, torch.float32))  # [B, T, H, D]
    return torch.cat(parts, dim=1).to(out_dtype)  # [B, n*T, H, D]
