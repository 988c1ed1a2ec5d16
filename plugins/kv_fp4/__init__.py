"""kv_fp4: the NVFP4 KV cache (E2M1 values, an E4M3 scale per 16 elements of head_dim, an FP32
amax per slot). This package so far holds the kernels (`kernels.py`, Triton), their PyTorch
reference (`reference.py`), the device-based choice between them (`backend.py`) and the storage
byte arithmetic (`sizes.py`); the storage class and the plugin hooks come with the core's KV
storage lifecycle. Importing it loads nothing heavy."""
from __future__ import annotations
