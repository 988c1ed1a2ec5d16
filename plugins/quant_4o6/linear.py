"""NVFP4Linear: a W4A4 linear through fouroversix, for inference (packed weights) and training (master weights).

Forward (both modes): y = Q(x) Q(W)^T + b. Activations x [..., K] are flattened to [M, K] and
quantized on every call (`activation_scale_rule`, round-to-nearest); the GEMM accumulates in
fp32 (backend.py); the bias is added in high precision. The emulated path multiplies
`backend.fake_quantize(x)` by the dequantized weight, kept in fp32 until the weight changes
(4 bytes per weight element on top of the packed ones): the same numbers as quantizing x and
calling the emulated GEMM, at about a quarter of the cost (backend.py: it saturates where
fouroversix's reference encoder wraps).

Inference: the weight is quantized once, at conversion, into LongLive's materialized buffers
`quantized_weight_values` (uint8 [out_p, in_p/2]), `quantized_weight_scale_factors`
(float8_e4m3fn, swizzled), `quantized_weight_amax` (fp32 [1]) and `quantized_weight_metadata`
(int32 [6]: original rows, cols, padded rows, cols, values packed, scales swizzled); the
high-precision weight is dropped. A LongLive `model_4o6.pt` loads into these buffers.

Training (NVIDIA's NVFP4 recipe, arXiv 2509.25149, as LongLive 2.0 trains): the module keeps the
master weight as a parameter; its own autograd function computes
- fprop  y  = Q(x) Q2d(W)^T                    (W in 16x16 tiles, so Q2d(W)^T == Q2d(W^T))
- dgrad  dx = Q_sr(dy) Q2d(W^T)^T              (gradient with stochastic rounding)
- wgrad  dW = Q_sr,rht(dy^T) Q_rht(x^T)^T      (16-point random Hadamard transform along the
                                                 token dim of both operands: H H^T = I cancels)
and returns dW for the fp32 master weight (straight-through). Q2d(W) and Q2d(W^T) are cached per
weight version and dropped by `refresh` after every optimizer step. A frozen weight
(requires_grad false: a quantized base under LoRA) gets no wgrad.
"""
from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from longlive.quant.weight_cache import QuantizedWeightCache
from longlive_plugins.quant_4o6 import backend

PACKED = ("quantized_weight_values", "quantized_weight_scale_factors", "quantized_weight_amax",
          "quantized_weight_metadata")


@attrs.frozen(kw_only=True)
class Recipe:
    """How one converted linear quantizes (from [plugins.quant_4o6] and the path that runs)."""

    path: str  # "real" | "emulate"
    weight_scale_rule: str
    activation_scale_rule: str
    gradient_scale_rule: str
    gradient_round_style: str
    weight_scale_2d: bool  # 16x16 weight tiles (training uses them so W and W^T quantize alike)
    wgrad_rht: bool


class NVFP4LinearFunction(torch.autograd.Function):
    """The quantized GEMMs of fprop, dgrad and wgrad (module docstring); `layer` supplies Q(W)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                layer: "NVFP4Linear") -> torch.Tensor:
        r = layer.recipe
        x2d = x.reshape(-1, x.shape[-1])  # [M, K]
        if r.path == "emulate":
            y = backend.fake_quantize(x2d, rule=r.activation_scale_rule) @ layer.dequantized_weight().t()
        else:
            y = backend.matmul(backend.quantize(x2d, rule=r.activation_scale_rule, path=r.path),
                               layer.quantized_weight(), path=r.path)
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
        r = layer.recipe
        dy2d = dy.reshape(-1, dy.shape[-1])  # [M, N]
        grad = dict(rule=r.gradient_scale_rule, path=r.path, round_style=r.gradient_round_style)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:  # dgrad: [M, N] x [N, K]
            dx = backend.matmul(backend.quantize(dy2d, **grad), layer.quantized_weight_t(), path=r.path)
            dx = dx.to(ctx.input_dtype).reshape(ctx.input_shape)
        if ctx.needs_input_grad[1]:  # wgrad: [N, M] x [M, K], reduced over the M tokens
            dy_t = backend.quantize(dy2d.t().contiguous(), rht=r.wgrad_rht, **grad)
            x_t = backend.quantize(x2d.t().contiguous(), rule=r.activation_scale_rule, path=r.path, rht=r.wgrad_rht)
            dw = backend.matmul(dy_t, x_t, path=r.path).to(layer.weight.dtype)
        if ctx.needs_input_grad[2]:
            db = dy2d.float().sum(0).to(layer.bias.dtype)
        return dx, dw, db, None


class NVFP4Linear(nn.Module):
    """An nn.Linear replacement computing in NVFP4 (module docstring); made by `from_linear`."""

    def __init__(self, in_features: int, out_features: int, *, recipe: Recipe, quant_format: Any,
                 bias: torch.Tensor | None, weight: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.recipe = recipe
        self.quant_format = quant_format  # the QuantFormat that made it (cast, refresh, packed state)
        self.bias = nn.Parameter(bias, requires_grad=bias.requires_grad) if bias is not None else None
        self._cache = QuantizedWeightCache()  # "w" | "w_t" -> QuantizedTensor, "w_dequantized" -> fp32
        if weight is not None:  # training: the master weight stays
            self.weight = nn.Parameter(weight, requires_grad=weight.requires_grad)
        else:
            self.weight = None
            (rows_cols, scales) = backend.packed_shapes(out_features, in_features)
            device = bias.device if bias is not None else None
            self.register_buffer("quantized_weight_values", torch.zeros(rows_cols, dtype=torch.uint8, device=device))
            self.register_buffer("quantized_weight_scale_factors",
                                 torch.zeros(scales, dtype=torch.float8_e4m3fn, device=device))
            self.register_buffer("quantized_weight_amax", torch.zeros(1, dtype=torch.float32, device=device))
            self.register_buffer("quantized_weight_metadata", torch.zeros(6, dtype=torch.int32, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, recipe: Recipe, quant_format: Any, training: bool) -> "NVFP4Linear":
        w = linear.weight
        bias = linear.bias.detach() if linear.bias is not None else None
        if bias is not None:
            bias.requires_grad_(linear.bias.requires_grad)
        if training:
            return cls(linear.in_features, linear.out_features, recipe=recipe, quant_format=quant_format,
                       bias=bias, weight=w.detach().requires_grad_(w.requires_grad))
        layer = cls(linear.in_features, linear.out_features, recipe=recipe, quant_format=quant_format, bias=bias,
                    weight=None)
        if not w.is_meta:
            layer.set_packed(backend.quantize(w.detach(), rule=recipe.weight_scale_rule, path=recipe.path,
                                              block_2d=recipe.weight_scale_2d))
        else:
            layer.to(device="meta")
        return layer

    # ---- the quantized weight ------------------------------------------------------------------

    @property
    def materialized(self) -> bool:
        """True when the module holds packed weights only (inference)."""
        return self.weight is None

    def set_packed(self, q: Any) -> None:
        """Store a fouroversix QuantizedTensor of the weight in the materialized buffers."""
        meta = [*q.original_shape, *q.padded_shape, int(q.values_are_packed), int(q.scale_factors_are_in_blackwell_layout)]
        self._cache.clear()
        self.quantized_weight_values = q.values.contiguous()
        self.quantized_weight_scale_factors = q.scale_factors.contiguous()
        self.quantized_weight_amax = q.amax.float().reshape(1)
        self.quantized_weight_metadata = torch.tensor(meta, dtype=torch.int32, device=q.values.device)

    def packed(self) -> dict[str, torch.Tensor]:
        """The materialized buffers (for training modules: the current Q(W) in the same layout)."""
        if self.materialized:
            return {name: getattr(self, name) for name in PACKED}
        q = self.quantized_weight()
        meta = [*q.original_shape, *q.padded_shape, int(q.values_are_packed), int(q.scale_factors_are_in_blackwell_layout)]
        return {"quantized_weight_values": q.values, "quantized_weight_scale_factors": q.scale_factors,
                "quantized_weight_amax": q.amax.float().reshape(1),
                "quantized_weight_metadata": torch.tensor(meta, dtype=torch.int32)}

    def quantized_weight(self) -> Any:
        """Q(W) [out, in] as a fouroversix QuantizedTensor."""
        if self.materialized:
            from fouroversix import DataType, QuantizedTensor

            meta = self.quantized_weight_metadata.tolist()
            return QuantizedTensor(self.quantized_weight_values, self.quantized_weight_scale_factors,
                                   self.quantized_weight_amax, DataType.nvfp4, tuple(meta[:2]),
                                   self.recipe.weight_scale_rule, tuple(meta[2:4]), values_are_packed=bool(meta[4]),
                                   scale_factors_are_in_blackwell_layout=bool(meta[5]))
        return self._cached("w", lambda w: w)

    def dequantized_weight(self) -> torch.Tensor:
        """dequantize(Q(W)) in fp32 [out, in]: the emulated forward GEMM's operand, kept until W changes."""
        key = self.quantized_weight_values if self.materialized else self.weight
        return self._cache.get("w_dequantized", key, lambda _: backend.dequantize(self.quantized_weight()))

    def quantized_weight_t(self) -> Any:
        """Q(W^T) [in, out] for dgrad. From packed weights: the dequantized W, transposed, re-quantized."""
        if self.materialized:
            w = backend.dequantize(self.quantized_weight())
            return backend.quantize(w.t().contiguous(), rule=self.recipe.weight_scale_rule, path=self.recipe.path,
                                    block_2d=self.recipe.weight_scale_2d)
        return self._cached("w_t", lambda w: w.t().contiguous())

    def _cached(self, name: str, view: Any) -> Any:
        r = self.recipe
        return self._cache.get(name, self.weight, lambda w: backend.quantize(
            view(w), rule=r.weight_scale_rule, path=r.path, block_2d=r.weight_scale_2d))

    def refresh(self) -> None:
        """The master weight changed (an optimizer step): drop the cached quantized copies."""
        self._cache.clear()

    # ---- nn.Module -------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return NVFP4LinearFunction.apply(x, self.weight, self.bias, self)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self.refresh()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        r = self.recipe
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{'packed' if self.materialized else 'master weights'}, path={r.path}, weight={r.weight_scale_rule}"
                f"{' 2d' if r.weight_scale_2d else ''}, activation={r.activation_scale_rule}")
