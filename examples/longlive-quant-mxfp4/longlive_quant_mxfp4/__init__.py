"""OCP MXFP4 linears for LongLive: a worked example of a third-party quantization format.

The plugin class below has an attrs `Config` (its `[plugins.quant_mxfp4]` table) and one hook:
`longlive_register_components` adds the format object (format.py) under the component kind
"quant_format". An experiment then selects it per role: `[quant] generator = "mxfp4"`.
"""
from __future__ import annotations

import attrs

from longlive.registry import hookimpl


@attrs.frozen(kw_only=True)
class QuantMXFP4Config:
    """The [plugins.quant_mxfp4] table."""

    quantize_activations: bool = True  # W4A4; false: weight-only W4A16


class QuantMXFP4:
    """OCP MXFP4 linears (E2M1 elements, one E8M0 power-of-two scale per 32), emulated in PyTorch."""

    Config = QuantMXFP4Config

    def __init__(self, config: QuantMXFP4Config) -> None:
        self.config = config

    @hookimpl
    def longlive_register_components(self, registry) -> None:
        from longlive_quant_mxfp4.format import MXFP4Format

        act = "W4A4" if self.config.quantize_activations else "W4A16"
        registry.add("quant_format", MXFP4Format.name, MXFP4Format(self.config),
                     summary=f"OCP MXFP4 {act}, E8M0 scale per 32 (emulated)")


__all__ = ["QuantMXFP4", "QuantMXFP4Config"]
