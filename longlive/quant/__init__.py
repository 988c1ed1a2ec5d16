"""Quantization in the core: the NVFP4 reference (`nvfp4`) shared by the quantization plugins."""
from __future__ import annotations
