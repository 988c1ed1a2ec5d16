"""MXFP4Format: the `quant_format` component "mxfp4" (the protocol of longlive/quant/format.py)."""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch
from torch import nn

from longlive.errors import ConfigError
from longlive_quant_mxfp4 import mxfp4
from longlive_quant_mxfp4.linear import PACKED, MXFP4Linear


class MXFP4Format:
    """OCP MXFP4 linears, emulated in PyTorch; settings from [plugins.quant_mxfp4]."""

    name = "mxfp4"
    block_size = mxfp4.BLOCK  # the applier refuses linears whose dims are not multiples of 32
    # Declared error of a converted linear: relative Frobenius error of y = x W^T against fp64 on
    # random x, W, both operands quantized (measured 0.16-0.18; the contract test checks it).
    expected_error = 0.25

    def __init__(self, config: Any) -> None:
        self.config = config

    def probe(self, device: torch.device) -> tuple[bool, str]:
        return False, ("this example format has no real path (an FP4 GEMM with E8M0 block scales needs "
                       "torch._scaled_mm's MX recipe on Blackwell, not wired here); it runs emulated")

    def convert(self, linear: nn.Linear, *, role: str, training: bool, path: str) -> nn.Module:
        return MXFP4Linear.from_linear(linear, quant_format=self, training=training,
                                       quantize_activations=self.config.quantize_activations)

    def packed_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return module.packed()

    def load_packed(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        if not module.materialized:
            raise ConfigError("quant_mxfp4: packed weights load into modules converted for inference only")
        for name in PACKED:
            have, want = state.get(name), getattr(module, name)
            if have is None or have.dtype != torch.uint8 or have.shape != want.shape:
                got = "missing" if have is None else f"{have.dtype} {tuple(have.shape)}"
                raise ConfigError(f"quant_mxfp4: packed {name} is {got}; expected uint8 {tuple(want.shape)}")
            setattr(module, name, have.to(want.device))

    def cast(self, module: nn.Module, dtype: torch.dtype) -> nn.Module:
        with torch.no_grad():  # the packed buffers are uint8: only the master weight and bias move
            for p in (module.weight, module.bias):
                if p is not None and p.dtype != dtype:
                    p.data = p.data.to(dtype)
        return module

    def forward_context(self) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def refresh(self, module: nn.Module) -> None:
        """Nothing cached: a training module quantizes its master weight on every forward."""
