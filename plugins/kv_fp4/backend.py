"""Which implementation of the kv_fp4 kernels runs on a device: Triton on CUDA, PyTorch elsewhere."""
from __future__ import annotations

from collections.abc import Callable

import attrs
import torch

from longlive_plugins.kv_fp4.reference import dequantize_slots_reference, quantize_chunk_reference


@attrs.frozen
class KVFP4Backend:
    """The pair of kernels a storage calls; `name` is recorded in the run ("triton" or "reference").

    quantize_chunk(x, amax, *, scale_rule, values_out=None, scales_out=None) -> (values, scales)
    dequantize_slots(values, scales, amax, slots, *, scale_rule, out_dtype, out=None) -> [B, n*T, H, D]
    """

    name: str
    quantize_chunk: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    dequantize_slots: Callable[..., torch.Tensor]


def select_backend(device: torch.device | str) -> KVFP4Backend:
    """Triton kernels on a CUDA device, the PyTorch reference on any other (bit-identical results)."""
    if torch.device(device).type == "cuda":
        from longlive_plugins.kv_fp4.kernels import dequantize_slots_triton, quantize_chunk_triton

        return KVFP4Backend("triton", quantize_chunk_triton, dequantize_slots_triton)
    return KVFP4Backend("reference", quantize_chunk_reference, dequantize_slots_reference)
