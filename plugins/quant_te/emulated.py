"""TEEmulatedLinear: TE's NVFP4BlockScaling recipe computed with the core NVFP4 reference (any device).

Where each rule comes from in TransformerEngine 2.20 (../shared/reference/nvfp4.md §3.1):
- operand roles (recipe.py): `transformer_engine/common/recipe/__init__.py`, NVFP4BlockScaling's
  QParams for fwd input, fwd weight and bwd grad;
- quantization of one operand: `transformer_engine/pytorch/custom_recipes/reference_nvfp4.py`
  (`NVFP4QuantizerRef._quantize`, `_quantize_blockwise_reference`), which matches the kernels:
  per-tensor amax, block scale e4m3(max|x_b| * (g_enc * 1/6)), elements RTNE (or SR) after a clamp
  to +-6; `nvfp4.quantize(..., op_order="te")` implements exactly that (tested against the formula);
- column-wise copies (for wgrad): the high-precision tensor transposed and quantized afresh, never
  the row-wise result transposed ("both versions are computed from the high precision input to
  avoid double quantization errors", the recipe's docstring); with RHT, the transposed copy is
  rotated first in its own dtype (`_apply_rht`: x @ (diag(signs) H16 / 4), TE's fixed sign vector
  `get_wgrad_sign_vector`) and its amax taken after the rotation (`global_amax_col`);
- GEMMs (`qgemm`): exact q*s operands, FP32 accumulation, alpha = amax_a amax_b / (6 6 S_a S_b)
  last; `nvfp4.emulated_gemm` multiplies by g_a g_b = (amax_a / 6 S_a)(amax_b / 6 S_b) (alpha to
  within one FP32 rounding).

The three GEMMs of a linear y = x W^T, x [M, K], W [N, K], dy [M, N]:
    fprop  y  = Q_in(x) Q_w(W)^T                 row-wise operands, no RHT
    dgrad  dx = Q_grad(dy) Q_w(W^T)^T             dy row-wise (SR), W column-wise (2D: = Q_w(W)^T)
    wgrad  dW = Q_grad(dy^T) Q_in(x^T)^T          both column-wise, rotated along the M tokens (RHT
                                                  on both operands: H H^T = I cancels)
The token dim M of the wgrad operands is padded with zero tokens to a multiple of 16 (the RHT and
block size; zeros add nothing to dW). The bias is added in high precision; dW goes to the master
weight (straight-through). Q_w(W) and Q_w(W^T) are cached per weight version (`refresh` drops them).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from longlive.quant import nvfp4
from longlive.quant.weight_cache import QuantizedWeightCache
from longlive_plugins.quant_te.recipe import OperandRule, OperandRules


def quantize_rowwise(x2d: torch.Tensor, rule: OperandRule) -> nvfp4.NVFP4Tensor:
    """Q(x) along the last dim of x2d [R, C] (TE's row-wise usage: no RHT)."""
    return nvfp4.quantize(x2d, **rule.quantize_kwargs())


def quantize_columnwise(x2d: torch.Tensor, rule: OperandRule) -> nvfp4.NVFP4Tensor:
    """Q(x^T) [C, R_pad] of x2d [R, C]: rows padded with zeros to a multiple of 16, then RHT (if the rule has it)."""
    t = F.pad(x2d, (0, 0, 0, -x2d.shape[0] % nvfp4.BLOCK_SIZE)).t().contiguous()  # [C, R_pad]
    if rule.rht:
        t = nvfp4.apply_rht(t, nvfp4.rht_signs(None, device=t.device)).to(t.dtype)  # TE rotates in the tensor's dtype
    return nvfp4.quantize(t, **rule.quantize_kwargs())


class TEEmulatedFunction(torch.autograd.Function):
    """fprop, dgrad and wgrad of the recipe (module docstring); `layer` supplies the cached Q(W), Q(W^T)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                layer: "TEEmulatedLinear") -> torch.Tensor:
        rules = layer.rules
        x2d = x.reshape(-1, x.shape[-1])  # [M, K]
        y = nvfp4.emulated_gemm(quantize_rowwise(x2d, rules.input), layer.quantized_weight(), torch.float32,
                                b_values=layer.weight_block_values("w"))
        y = y.to(x.dtype)  # [M, N]
        if bias is not None:
            y = y + bias.to(y.dtype)
        ctx.save_for_backward(x2d)
        ctx.layer, ctx.input_shape, ctx.input_dtype = layer, x.shape, x.dtype
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (x2d,) = ctx.saved_tensors
        layer = ctx.layer
        rules = layer.rules
        dy2d = dy.reshape(-1, dy.shape[-1])  # [M, N]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:  # dgrad: [M, N] x [N, K]
            dx = nvfp4.emulated_gemm(quantize_rowwise(dy2d, rules.grad), layer.quantized_weight_t(), torch.float32,
                                     b_values=layer.weight_block_values("w_t"))
            dx = dx.to(ctx.input_dtype).reshape(ctx.input_shape)
        if ctx.needs_input_grad[1]:  # wgrad: [N, M_pad] x [M_pad, K], reduced over the tokens
            dw = nvfp4.emulated_gemm(quantize_columnwise(dy2d, rules.grad), quantize_columnwise(x2d, rules.input),
                                     torch.float32).to(layer.weight.dtype)
        if ctx.needs_input_grad[2]:
            db = dy2d.float().sum(0).to(layer.bias.dtype)
        return dx, dw, db, None


class TEEmulatedLinear(nn.Module):
    """An nn.Linear replacement computing TE's NVFP4 recipe in plain PyTorch; keeps the high-precision weight
    (TE has no packed format: it quantizes the weight it holds)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, rules: OperandRules,
                 quant_format: Any) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.rules = rules
        self.quant_format = quant_format  # the QuantFormat that made it (cast, refresh, packed state)
        self.weight = nn.Parameter(weight, requires_grad=weight.requires_grad)
        self.bias = nn.Parameter(bias, requires_grad=bias.requires_grad) if bias is not None else None
        self._cache = QuantizedWeightCache()  # "w" | "w_t" -> Q of the master weight; "w values" | "w_t values"

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, rules: OperandRules, quant_format: Any) -> "TEEmulatedLinear":
        bias = linear.bias.detach().requires_grad_(linear.bias.requires_grad) if linear.bias is not None else None
        return cls(linear.weight.detach().requires_grad_(linear.weight.requires_grad), bias, rules=rules,
                   quant_format=quant_format)

    def quantized_weight(self) -> nvfp4.NVFP4Tensor:
        """Q_w(W) [N, K], row-wise (fprop)."""
        return self._cached("w", lambda w: w)

    def quantized_weight_t(self) -> nvfp4.NVFP4Tensor:
        """Q_w(W^T) [K, N], the column-wise copy (dgrad), quantized from W itself."""
        return self._cached("w_t", lambda w: w.t().contiguous())

    def weight_block_values(self, name: str) -> torch.Tensor:
        """`nvfp4.block_values` of the cached Q(W) ("w") or Q(W^T) ("w_t"), fp32, kept until W changes:
        the GEMM operand, unpacked once instead of in every call."""
        quantized = self.quantized_weight if name == "w" else self.quantized_weight_t
        return self._cache.get(f"{name} values", self.weight, lambda _: nvfp4.block_values(quantized()))

    def _cached(self, name: str, view: Any) -> nvfp4.NVFP4Tensor:
        return self._cache.get(name, self.weight, lambda w: nvfp4.quantize(view(w), **self.rules.weight.quantize_kwargs()))

    def refresh(self) -> None:
        """The master weight changed (an optimizer step): drop the cached quantized copies."""
        self._cache.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TEEmulatedFunction.apply(x, self.weight, self.bias, self)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self.refresh()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        r = self.rules
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"emulated TE NVFP4: weight {r.weight.scale_rule}{' 2d' if r.weight.block_2d else ''}, "
                f"input {r.input.scale_rule}, grad {r.grad.round_style}{' rht' if r.grad.rht else ''}")
