"""An ad-hoc quantization format for the core's tests: int8 weights with one float8 scale per row.

Pure PyTorch, no extra package. Inference modules hold packed weights only (`codes` int8 and
`scales` float8_e4m3fn, so a careless `.float()` would be caught); training modules keep the
master weight and fake-quantize it per forward. `probe` passes only on a device named in
`real_devices`, so tests can exercise the real/auto/emulate decision on the CPU.
"""
from __future__ import annotations

import contextlib

import attrs
import torch
from torch import nn

from longlive.registry import hookimpl


def fake_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, float8 scales [rows, 1]) with w ~ codes * scales."""
    scales = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=2**-6).to(torch.float8_e4m3fn)
    codes = torch.round(w / scales.float()).clamp(-127, 127).to(torch.int8)
    return codes, scales


class FakeQuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, fmt: "FakeFormat", training: bool, path: str) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.quant_format, self.path, self.refreshes = fmt, path, 0
        self.bias = linear.bias
        if training:
            self.weight = linear.weight
        else:
            self.weight = None
            codes, scales = fake_quantize(linear.weight.detach())
            self.register_buffer("codes", codes)
            self.register_buffer("scales", scales)

    def dequantized(self) -> torch.Tensor:
        if self.weight is not None:
            codes, scales = fake_quantize(self.weight.detach())
            w = codes.float() * scales.float()
            return self.weight + (w - self.weight).detach()  # straight-through
        return self.codes.float() * self.scales.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.dequantized().to(x.dtype), self.bias)


class FakeFormat:
    name = "fake8"
    block_size = 16

    def __init__(self, real_devices: tuple[str, ...] = ()) -> None:
        self.real_devices = real_devices

    def probe(self, device):
        ok = str(device) in self.real_devices
        return ok, "" if ok else f"no fake8 kernels on {device}"

    def convert(self, linear, *, role, training, path):
        return FakeQuantLinear(linear, self, training, path)

    def packed_state(self, module):
        if module.weight is None:
            return {"codes": module.codes, "scales": module.scales}
        codes, scales = fake_quantize(module.weight.detach())
        return {"codes": codes, "scales": scales}

    def load_packed(self, module, state):
        module.codes, module.scales = state["codes"], state["scales"]

    def cast(self, module, dtype):
        for p in (module.weight, module.bias):
            if p is not None:
                p.data = p.data.to(dtype)
        return module

    def forward_context(self):
        return contextlib.nullcontext()

    def refresh(self, module):
        module.refreshes += 1


@attrs.frozen
class FakeQuantConfig:
    real_devices: tuple[str, ...] = ()


class FakeQuant:
    """Registers the quant_format "fake8" (tests)."""

    Config = FakeQuantConfig

    def __init__(self, config: FakeQuantConfig) -> None:
        self.config = config

    @hookimpl
    def longlive_register_components(self, registry):
        registry.add("quant_format", "fake8", FakeFormat(self.config.real_devices), summary="test format")
