"""quant_te: NVFP4 linears with TransformerEngine's NVFP4BlockScaling recipe (te.Linear on Blackwell, emulated elsewhere)."""
from longlive_plugins.quant_te.plugin import QuantTE

__all__ = ["QuantTE"]
