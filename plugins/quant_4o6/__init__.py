"""quant_4o6: NVFP4 W4A4 linears through fouroversix 1.0.5 (4/6 adaptive block scaling), inference and training."""
from longlive_plugins.quant_4o6.plugin import Quant4o6

__all__ = ["Quant4o6"]
