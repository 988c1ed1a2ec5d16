"""FourOverSixFormat: the `quant_format` component "fouroversix" (longlive/quant/format.py protocol)."""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch
from torch import nn

from longlive.errors import ConfigError
from longlive_plugins.quant_4o6 import backend
from longlive_plugins.quant_4o6.linear import PACKED, NVFP4Linear, Recipe


class FourOverSixFormat:
    """NVFP4 linears with fouroversix's scale rules; settings from [plugins.quant_4o6]."""

    name = "fouroversix"
    block_size = backend.BLOCK
    # Declared error of a converted linear (the contract test, tests/quant/test_format_contract.py):
    # relative Frobenius error of y = x W^T against fp64 on random inputs, W4A4 (measured ~0.12).
    expected_error = 0.2

    def __init__(self, config: Any) -> None:
        self.config = config

    def probe(self, device: torch.device) -> tuple[bool, str]:
        return backend.probe(device)

    def recipe(self, *, training: bool, path: str) -> Recipe:
        c = self.config
        return Recipe(path=path, weight_scale_rule=c.weight_scale_rule, activation_scale_rule=c.activation_scale_rule,
                      gradient_scale_rule=c.gradient_scale_rule, gradient_round_style=c.gradient_round_style,
                      weight_scale_2d=c.train_weight_scale_2d if training else c.weight_scale_2d,
                      wgrad_rht=c.wgrad_rht)

    def convert(self, linear: nn.Linear, *, role: str, training: bool, path: str) -> nn.Module:
        return NVFP4Linear.from_linear(linear, recipe=self.recipe(training=training, path=path), quant_format=self,
                                       training=training)

    def packed_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return module.packed()

    def load_packed(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        if not module.materialized:
            raise ConfigError("quant_4o6: packed weights load into modules converted for inference only; "
                              "training keeps master weights (load the BF16 weights instead)")
        state = normalize_packed(state)
        missing = [k for k in PACKED if k not in state]
        if missing:
            raise ConfigError(f"quant_4o6: packed state lacks {missing}; expected {list(PACKED)}")
        for name in PACKED:
            own = getattr(module, name)
            if tuple(state[name].shape) != tuple(own.shape) or state[name].dtype.itemsize != own.dtype.itemsize:
                raise ConfigError(f"quant_4o6: packed {name} is {tuple(state[name].shape)} {state[name].dtype}, the "
                                  f"{module.out_features}x{module.in_features} linear needs {tuple(own.shape)} "
                                  f"{own.dtype}; the checkpoint is for another preset")
        for name in PACKED:  # same bits, our dtype (a file may store the E4M3 scales as uint8)
            own = getattr(module, name)
            setattr(module, name, state[name].view(own.dtype).to(own.device))

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


def normalize_packed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LongLive's materialized buffers in our layout: amax as [1], metadata int32[6].

    LongLive's own materialization writes metadata int32[4] (original and padded shape); fouroversix
    1.0.5 adds two flags (values packed, scales swizzled), both 1 for what LongLive writes.
    """
    out = dict(state)
    if "quantized_weight_amax" in out:
        out["quantized_weight_amax"] = out["quantized_weight_amax"].float().reshape(1)
    meta = out.get("quantized_weight_metadata")
    if meta is not None and meta.numel() == 4:
        out["quantized_weight_metadata"] = torch.cat([meta.to(torch.int32).flatten(),
                                                      torch.ones(2, dtype=torch.int32, device=meta.device)])
    return out
