"""quant_fp8: FP8 E4M3 W8A8 linears (per-token and per-channel scales) through torch._scaled_mm, emulated elsewhere."""
from longlive_plugins.quant_fp8.plugin import QuantFP8

__all__ = ["QuantFP8"]
