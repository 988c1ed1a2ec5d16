"""MXFP4Linear: y = MX(x) MX(W)^T + b, emulated (dequantized operands, fp32 GEMM).

Inference holds the packed weight only: `weight_mx` (uint8 [out, in/2], two E2M1 codes a byte)
and `weight_scale_e8m0` (uint8 [out, in/32]). Both are integer tensors, so no dtype cast ever
touches them. Training keeps the master weight and is straight-through: the forward uses the
quantized operands, the gradients treat the rounding as identity (dx = dy MX(W), dW = dy^T MX(x)).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from longlive.quant.weight_cache import QuantizedWeightCache
from longlive_quant_mxfp4 import mxfp4

PACKED = ("weight_mx", "weight_scale_e8m0")


def straight_through(t: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """`quantized` in the forward, the identity of `t` in the backward."""
    return t + (quantized.to(t.dtype) - t).detach()


class MXFP4Linear(nn.Module):
    """An nn.Linear replacement computing in MXFP4 (module docstring); made by `from_linear`."""

    def __init__(self, in_features: int, out_features: int, *, quant_format: Any, quantize_activations: bool,
                 bias: torch.Tensor | None, weight: torch.Tensor | None, device: torch.device | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.quant_format = quant_format  # the QuantFormat that made it (cast, refresh, packed state)
        self.quantize_activations = quantize_activations
        self._cache = QuantizedWeightCache()  # "dequantized" -> the packed weight in fp32, unpacked once
        self.bias = nn.Parameter(bias, requires_grad=bias.requires_grad) if bias is not None else None
        if weight is not None:  # training: the master weight stays
            self.weight = nn.Parameter(weight, requires_grad=weight.requires_grad)
        else:
            self.weight = None
            self.register_buffer("weight_mx", torch.zeros(out_features, in_features // 2, dtype=torch.uint8,
                                                          device=device))
            self.register_buffer("weight_scale_e8m0", torch.zeros(out_features, in_features // mxfp4.BLOCK,
                                                                  dtype=torch.uint8, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, quant_format: Any, quantize_activations: bool,
                    training: bool) -> "MXFP4Linear":
        w = linear.weight
        bias = linear.bias.detach().requires_grad_(linear.bias.requires_grad) if linear.bias is not None else None
        kw = dict(quant_format=quant_format, quantize_activations=quantize_activations, bias=bias)
        if training:
            return cls(linear.in_features, linear.out_features, weight=w.detach().requires_grad_(w.requires_grad),
                       **kw)
        layer = cls(linear.in_features, linear.out_features, weight=None, device=w.device, **kw)
        if not w.is_meta:
            layer.weight_mx, layer.weight_scale_e8m0 = mxfp4.quantize(w.detach())
        return layer

    @property
    def materialized(self) -> bool:
        """True when the module holds the packed weight only (inference)."""
        return self.weight is None

    def packed(self) -> dict[str, torch.Tensor]:
        """The packed weight (for a training module: its current master weight, quantized)."""
        if self.materialized:
            return {"weight_mx": self.weight_mx, "weight_scale_e8m0": self.weight_scale_e8m0}
        values, scales = mxfp4.quantize(self.weight.detach())
        return {"weight_mx": values, "weight_scale_e8m0": scales}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.materialized:
            w = self._cache.get("dequantized", self.weight_mx, lambda packed: mxfp4.dequantize(
                packed, self.weight_scale_e8m0))
        else:
            w = straight_through(self.weight, mxfp4.fake_quantize(self.weight.detach())).float()
        xq = straight_through(x, mxfp4.fake_quantize(x.detach())) if self.quantize_activations else x
        y = torch.nn.functional.linear(xq.float(), w).to(x.dtype)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cache.clear()  # new packed weights: unpack them again
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        act = "W4A4" if self.quantize_activations else "W4A16"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{'packed' if self.materialized else 'master weights'}, mxfp4 {act} (emulated)")
