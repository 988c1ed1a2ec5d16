"""FP8RowwiseFormat: the `quant_format` component "fp8_rowwise" (longlive/quant/format.py protocol)."""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch
from torch import nn

from longlive.errors import ConfigError
from longlive_plugins.quant_fp8 import fp8
from longlive_plugins.quant_fp8.linear import PACKED, FP8Linear, Recipe


class FP8RowwiseFormat:
    """W8A8 E4M3 linears with per-token activation and per-channel weight scales; [plugins.quant_fp8]."""

    name = "fp8_rowwise"
    block_size = fp8.ALIGN
    # Declared error of a converted linear: relative Frobenius error of y = x W^T against fp64 on
    # standard normal x, W (both operands rounded, <= 2^-4 each per element; measured ~0.03).
    expected_error = 0.05

    def __init__(self, config: Any) -> None:
        self.config = config

    def probe(self, device: torch.device) -> tuple[bool, str]:
        return fp8.probe(device)

    def convert(self, linear: nn.Linear, *, role: str, training: bool, path: str) -> nn.Module:
        recipe = Recipe(path=path, fast_accum=self.config.fast_accum)
        return FP8Linear.from_linear(linear, recipe=recipe, quant_format=self, training=training)

    def packed_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return module.packed()

    def load_packed(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        if not module.materialized:
            raise ConfigError("quant_fp8: packed weights load into modules converted for inference only; "
                              "training keeps master weights (load the high-precision weights instead)")
        missing = [k for k in PACKED if k not in state]
        if missing:
            raise ConfigError(f"quant_fp8: packed state lacks {missing}; expected {list(PACKED)}")
        q, s = state["weight_fp8"], state["weight_scale"]
        if q.dtype != fp8.E4M3 or tuple(q.shape) != (module.out_features, module.in_features):
            raise ConfigError(f"quant_fp8: weight_fp8 is {q.dtype} {tuple(q.shape)}; expected float8_e4m3fn "
                              f"{(module.out_features, module.in_features)}")
        device = module.weight_fp8.device
        module.weight_fp8 = q.to(device)
        module.weight_scale = s.to(device=device, dtype=torch.float32).reshape(module.out_features, 1)

    def cast(self, module: nn.Module, dtype: torch.dtype) -> nn.Module:
        with torch.no_grad():
            for p in (module.weight, module.bias):
                if p is not None and p.dtype != dtype:
                    p.data = p.data.to(dtype)
        module.refresh()
        return module

    def forward_context(self) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def refresh(self, module: nn.Module) -> None:
        module.refresh()
