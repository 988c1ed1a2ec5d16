"""TENVFP4Format: the `quant_format` component "te_nvfp4" (longlive/quant/format.py protocol).

Real path (`probe` passes: a CUDA GPU of compute capability >= 10.0 and TransformerEngine
importable and reporting NVFP4 available): every linear becomes a te.Linear (real.py) and forwards
run inside `te.autocast(enabled=True, recipe=NVFP4BlockScaling(**recipe_kwargs))`, this format's
`forward_context`. Emulated path: TE's recipe through the core NVFP4 reference (emulated.py).
No packed format, like LongLive's TE path: modules hold the (merged) high-precision weights and
the recipe quantizes them; `packed_state` is empty and `load_packed` refuses tensors.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from longlive.errors import ConfigError
from longlive_plugins.quant_te.emulated import TEEmulatedLinear
from longlive_plugins.quant_te.real import TELinear
from longlive_plugins.quant_te.recipe import operand_rules, recipe_kwargs
from longlive_plugins.quant_te.te_api import TE_INSTALL, TEApi, load_te

REAL_MIN_CAPABILITY = (10, 0)  # TE's _compute_nvfp4_support: NVFP4 needs compute capability >= 10.0


def probe_real(device: torch.device, load: Callable[[], TEApi]) -> tuple[bool, str]:
    """Whether TE's NVFP4 recipe runs on `device`: CUDA, compute capability >= 10.0, TE importable and agreeing."""
    if device.type != "cuda":
        return False, f"TE's NVFP4 recipe needs a CUDA GPU of compute capability >= 10.0 (Blackwell); run.device is {device}"
    capability = torch.cuda.get_device_capability(device)
    if capability < REAL_MIN_CAPABILITY:
        return False, (f"compute capability {capability[0]}.{capability[1]} < 10.0: TE runs NVFP4BlockScaling on "
                       f"Blackwell only")
    try:
        te = load()
    except (ImportError, OSError) as e:
        return False, f"transformer_engine is not importable ({type(e).__name__}: {e}); {TE_INSTALL}"
    ok, reason = te.is_nvfp4_available(return_reason=True)
    return (True, "") if ok else (False, f"TE reports NVFP4 unavailable: {reason}")


class TENVFP4Format:
    """NVFP4 linears with TE's NVFP4BlockScaling recipe; settings from [plugins.quant_te]."""

    name = "te_nvfp4"
    block_size = 16  # TE: NVFP4 GEMM dims divisible by 16 (the applier checks every converted linear)
    # Declared error of a converted linear (tests/quant/test_format_contract.py): relative Frobenius
    # error against fp64 on random inputs, W4A4 with 16x16 weight tiles: measured 0.15 forward,
    # 0.17 wgrad and 0.18 dgrad (stochastic rounding adds variance to the gradients).
    expected_error = 0.25

    def __init__(self, config: Any, te_loader: Callable[[], TEApi] = load_te) -> None:
        self.config = config
        self._te_loader = te_loader  # tests pass a stand-in's loader
        self._te: TEApi | None = None
        self._recipe: Any = None
        self.real_modules = 0  # te.Linear modules made: the forward context enters TE's autocast only then

    def te(self) -> TEApi:
        """The TE API, imported once, on first use (the real path only)."""
        if self._te is None:
            self._te = self._te_loader()
        return self._te

    def recipe(self) -> Any:
        """TE's NVFP4BlockScaling built from the config, once."""
        if self._recipe is None:
            self._recipe = self.te().NVFP4BlockScaling(**recipe_kwargs(self.config))
        return self._recipe

    def probe(self, device: torch.device) -> tuple[bool, str]:
        return probe_real(device, self.te)

    def convert(self, linear: nn.Linear, *, role: str, training: bool, path: str) -> nn.Module:
        if path == "real":
            self.real_modules += 1
            return TELinear.from_linear(linear, te=self.te(), quant_format=self)
        return TEEmulatedLinear.from_linear(linear, rules=operand_rules(self.config), quant_format=self)

    def packed_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {}  # no packed format (module docstring)

    def load_packed(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ConfigError(f"te_nvfp4 has no packed format (TE quantizes the high-precision weights it holds); "
                              f"got packed tensors {sorted(state)}: load the merged BF16 weights instead")

    def cast(self, module: nn.Module, dtype: torch.dtype) -> nn.Module:
        with torch.no_grad():
            for p in module.parameters():
                if p.is_floating_point() and p.dtype != dtype:
                    p.data = p.data.to(dtype)
        module.refresh()
        return module

    def forward_context(self) -> ContextManager[Any]:
        if not self.real_modules:
            return contextlib.nullcontext()
        return self.te().autocast(enabled=True, recipe=self.recipe())

    def refresh(self, module: nn.Module) -> None:
        module.refresh()
