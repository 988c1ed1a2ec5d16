"""kv_fp4: the NVFP4 KV cache (E2M1 values, an E4M3 scale per 16 elements of head_dim, an FP32
amax per slot and layer): the storage (`storage.py`), the Triton kernels (`kernels.py`), their
PyTorch reference (`reference.py`), the device-based choice between them (`backend.py`) and the
byte arithmetic (`sizes.py`). Importing it loads nothing heavy."""
from __future__ import annotations

from longlive_plugins.kv_fp4.plugin import KVFP4, KVFP4Config

__all__ = ["KVFP4", "KVFP4Config"]
