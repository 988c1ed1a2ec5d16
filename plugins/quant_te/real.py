"""TELinear: the real path, an nn.Linear replaced by TransformerEngine's te.Linear holding the same weights.

As LongLive's TE path (longlive2.md §5.5): te.Linear(in, out, bias, params_dtype, device) gets the
merged high-precision weights copied in, and TE quantizes them itself at every forward, which
must run inside `te.autocast(enabled=True, recipe=NVFP4BlockScaling(...))` (the format's
`forward_context`). Written against TE 2.20's documented API; never run here (no Blackwell GPU,
TE not installable without CUDA); the wiring is tested against a stand-in that records calls.
State-dict names: `<fqn>.te_linear.weight`, `<fqn>.te_linear.bias` and TE's `_extra_state`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from longlive_plugins.quant_te.te_api import TEApi


class TELinear(nn.Module):
    """Holds a te.Linear (`te_linear`); forwards to it."""

    def __init__(self, te_linear: nn.Module, *, in_features: int, out_features: int, has_bias: bool,
                 quant_format: Any) -> None:
        super().__init__()
        self.te_linear = te_linear
        self.in_features, self.out_features = in_features, out_features
        self.has_bias = has_bias
        self.quant_format = quant_format  # the QuantFormat that made it (its forward context holds the recipe)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, te: TEApi, quant_format: Any) -> "TELinear":
        w = linear.weight
        te_linear = te.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              params_dtype=w.dtype, device=w.device)
        with torch.no_grad():
            te_linear.weight.copy_(w)
            if linear.bias is not None:
                te_linear.bias.copy_(linear.bias)
        te_linear.weight.requires_grad_(w.requires_grad)
        if linear.bias is not None:
            te_linear.bias.requires_grad_(linear.bias.requires_grad)
        return cls(te_linear, in_features=linear.in_features, out_features=linear.out_features,
                   has_bias=linear.bias is not None, quant_format=quant_format)

    @property
    def weight(self) -> torch.Tensor:
        return self.te_linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.te_linear.bias if self.has_bias else None

    def refresh(self) -> None:
        """Nothing cached here: TE re-quantizes the weight at every forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.te_linear(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, TransformerEngine NVFP4"
