"""The `quant_format` component: what a quantization format (NVFP4 through fouroversix, TE, ...) provides.

A plugin registers a format object under component kind "quant_format"
(`registry.add("quant_format", name, fmt)`); the experiment picks one per model role in `[quant]`
and the core's applier (longlive/quant/apply.py) converts the model's linears through it. The
protocol below is all the core and the trainer know about a format:

- `probe(device)` says whether the *real* path (hardware low-precision GEMMs) can run on `device`
  and, if not, why. The emulated path (the same numerics in plain PyTorch) must run anywhere.
- `convert(linear, role=, training=, path=)` returns the module that replaces an `nn.Linear`.
  For inference it may hold packed weights only; for training it keeps the master weight as a
  parameter and quantizes on the fly (the optimizer updates the master copy).
- `packed_state(module)` / `load_packed(module, state)`: the packed tensors of one converted module
  (what a materialized checkpoint holds), names relative to the module.
  A format without a packed form (TE quantizes the high-precision weights it holds) returns {}
  and its `load_packed` refuses tensors with a ConfigError.
- `cast(module, dtype)`: move a converted module's *high-precision* tensors to `dtype` and leave the
  packed ones alone. `module.float()` or `.to(dtype)` would also cast float8 block scales, which
  are floating-point tensors to torch.
- `forward_context()`: an optional context manager the caller enters around forwards (a library's
  autocast); `contextlib.nullcontext()` when the format needs none.
- `refresh(module)`: called after every optimizer step, so a format can drop or rebuild what it
  derives from the master weights (cached quantized copies).
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Protocol, runtime_checkable

import torch
from torch import nn

MODES = ("auto", "real", "emulate")  # auto: real where probe says yes, else emulate (logged)
PATHS = ("real", "emulate")
ROLES = ("generator", "teacher", "critic")
NONE = "none"  # the [quant] value that leaves a role in high precision


@runtime_checkable
class QuantFormat(Protocol):
    """A quantization format (module docstring). `block_size`: converted dims must be multiples of it."""

    name: str
    block_size: int

    def probe(self, device: torch.device) -> tuple[bool, str]:
        """(True, "") when the real path runs on `device`; else (False, why not, one line)."""

    def convert(self, linear: nn.Linear, *, role: str, training: bool, path: str) -> nn.Module:
        """The module replacing `linear`; `path` is "real" or "emulate" (already probed)."""

    def packed_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The packed tensors of a converted module, by name relative to the module."""

    def load_packed(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load what `packed_state` returned (or a compatible materialized checkpoint's tensors)."""

    def cast(self, module: nn.Module, dtype: torch.dtype) -> nn.Module:
        """Cast the high-precision tensors of a converted module only; return it."""

    def forward_context(self) -> ContextManager[Any]:
        """A context manager entered around forwards (`contextlib.nullcontext()` if none)."""

    def refresh(self, module: nn.Module) -> None:
        """Drop or rebuild what the module derives from its master weight (after an optimizer step)."""


def is_quantized(module: nn.Module) -> bool:
    """Whether `module` was made by a format's `convert` (it carries `quant_format`)."""
    return isinstance(getattr(module, "quant_format", None), QuantFormat)


def quantized_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(fqn, module) of every converted module of `model`, outermost first."""
    return [(name, m) for name, m in model.named_modules() if is_quantized(m)]


def forward_context(model: nn.Module) -> ContextManager[Any]:
    """The forward contexts of every format used in `model`, entered together."""
    formats = {id(m.quant_format): m.quant_format for _, m in quantized_modules(model)}
    stack = contextlib.ExitStack()
    for fmt in formats.values():
        stack.enter_context(fmt.forward_context())
    return stack


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model.to(dtype)` that leaves packed tensors alone: converted modules cast through their format."""
    converted = quantized_modules(model)
    inside = {id(t) for _, m in converted for t in [*m.parameters(), *m.buffers()]}
    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if id(p) not in inside and p.is_floating_point() and p.dtype != dtype:
                    p.data = p.data.to(dtype)
            for name, b in list(module.named_buffers(recurse=False)):
                if id(b) not in inside and b.is_floating_point() and b.dtype != dtype:
                    module._buffers[name] = b.to(dtype)
    for _, m in converted:
        m.quant_format.cast(m, dtype)
    return model


def refresh_model(model: nn.Module) -> int:
    """Tell every converted module its master weight changed (after an optimizer step); returns the count."""
    converted = quantized_modules(model)
    for _, m in converted:
        m.quant_format.refresh(m)
    return len(converted)


def packed_bytes(model: nn.Module) -> int:
    """Bytes of the packed tensors of every converted module (what a materialized checkpoint stores)."""
    return sum(t.numel() * t.element_size() for _, m in quantized_modules(model)
               for t in m.quant_format.packed_state(m).values())
