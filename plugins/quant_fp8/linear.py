"""FP8Linear: a W8A8 E4M3 linear with row-wise scales (fp8.py), for inference (packed) and training (master weights).

Forward: y = s_x s_w (Q(x) Q(W)^T) + b. Activations x [..., K] are flattened to [M, K] and
quantized per token on every call; the weight is quantized per output channel; the bias is added
in high precision. The real path's GEMM returns BF16 (torch._scaled_mm's row-wise kernels write
BF16), cast to the input's dtype.

Inference: the weight is quantized once, at conversion, into the buffers `weight_fp8`
(float8_e4m3fn [out, in]) and `weight_scale` (fp32 [out, 1]); the high-precision weight is dropped.

Training (straight-through): the module keeps the master weight as a parameter; fprop runs the
FP8 GEMM, and the gradients are those of the dequantized operands in high precision:
dx = dy Q(W)s_w, dW = dy^T Q(x)s_x (the rounding is treated as identity). Q(W) is cached per
weight version and dropped by `refresh` after every optimizer step. A frozen weight (a quantized
base under LoRA) gets no gradient.
"""
from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from longlive.quant.weight_cache import QuantizedWeightCache
from longlive_plugins.quant_fp8 import fp8

PACKED = ("weight_fp8", "weight_scale")
REAL_OUT_DTYPE = torch.bfloat16


@attrs.frozen(kw_only=True)
class Recipe:
    """How one converted linear computes."""

    path: str  # "real" | "emulate"
    fast_accum: bool  # _scaled_mm's use_fast_accum (real path only)


class FP8LinearFunction(torch.autograd.Function):
    """FP8 fprop; straight-through gradients from the dequantized operands (module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                layer: "FP8Linear") -> torch.Tensor:
        r = layer.recipe
        x2d = x.reshape(-1, x.shape[-1])  # [M, K]
        qx, sx = fp8.quantize_rows(x2d)
        qw, sw = layer.quantized_weight()
        out_dtype = REAL_OUT_DTYPE if r.path == "real" else torch.float32
        y = fp8.matmul(qx, sx, qw, sw, out_dtype, path=r.path, fast_accum=r.fast_accum).to(x.dtype)  # [M, N]
        if bias is not None:
            y = y + bias.to(y.dtype)
        ctx.save_for_backward(qx, sx)
        ctx.layer, ctx.input_shape, ctx.input_dtype = layer, x.shape, x.dtype
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        qx, sx = ctx.saved_tensors
        layer = ctx.layer
        dy2d = dy.reshape(-1, dy.shape[-1]).float()  # [M, N]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:  # [M, N] x [N, K]
            qw, sw = layer.quantized_weight()
            dx = (dy2d @ fp8.dequantize_rows(qw, sw)).to(ctx.input_dtype).reshape(ctx.input_shape)
        if ctx.needs_input_grad[1]:  # [N, M] x [M, K]
            dw = (dy2d.t() @ fp8.dequantize_rows(qx, sx)).to(layer.weight.dtype)
        if ctx.needs_input_grad[2]:
            db = dy2d.sum(0).to(layer.bias.dtype)
        return dx, dw, db, None


class FP8Linear(nn.Module):
    """An nn.Linear replacement computing in FP8 E4M3 (module docstring); made by `from_linear`."""

    def __init__(self, in_features: int, out_features: int, *, recipe: Recipe, quant_format: Any,
                 bias: torch.Tensor | None, weight: torch.Tensor | None, device: torch.device | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.recipe = recipe
        self.quant_format = quant_format  # the QuantFormat that made it (cast, refresh, packed state)
        self.bias = nn.Parameter(bias, requires_grad=bias.requires_grad) if bias is not None else None
        self._cache = QuantizedWeightCache()  # "w" -> (Q(W), s_w) of the master weight
        if weight is not None:  # training: the master weight stays
            self.weight = nn.Parameter(weight, requires_grad=weight.requires_grad)
        else:
            self.weight = None
            self.register_buffer("weight_fp8", torch.zeros(out_features, in_features, dtype=fp8.E4M3, device=device))
            self.register_buffer("weight_scale", torch.zeros(out_features, 1, dtype=torch.float32, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, recipe: Recipe, quant_format: Any, training: bool) -> "FP8Linear":
        w = linear.weight
        bias = linear.bias.detach() if linear.bias is not None else None
        if bias is not None:
            bias.requires_grad_(linear.bias.requires_grad)
        if training:
            return cls(linear.in_features, linear.out_features, recipe=recipe, quant_format=quant_format,
                       bias=bias, weight=w.detach().requires_grad_(w.requires_grad))
        layer = cls(linear.in_features, linear.out_features, recipe=recipe, quant_format=quant_format, bias=bias,
                    weight=None, device=w.device)
        if not w.is_meta:
            layer.weight_fp8, layer.weight_scale = fp8.quantize_rows(w.detach())
        return layer

    @property
    def materialized(self) -> bool:
        """True when the module holds packed weights only (inference)."""
        return self.weight is None

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q(W) float8_e4m3fn [out, in], s_w fp32 [out, 1])."""
        if self.materialized:
            return self.weight_fp8, self.weight_scale
        return self._cache.get("w", self.weight, fp8.quantize_rows)

    def packed(self) -> dict[str, torch.Tensor]:
        """The packed weight (for training modules: the current Q(W) in the same layout)."""
        q, s = self.quantized_weight()
        return {"weight_fp8": q, "weight_scale": s}

    def refresh(self) -> None:
        """The master weight changed (an optimizer step): drop the cached Q(W)."""
        self._cache.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FP8LinearFunction.apply(x, self.weight, self.bias, self)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self.refresh()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{'packed' if self.materialized else 'master weights'}, path={self.recipe.path}, e4m3 row-wise")
