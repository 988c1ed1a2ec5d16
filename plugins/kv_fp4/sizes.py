"""Bytes a KV cache holds, BF16 vs NVFP4, from the geometry (no literal token counts)."""
from __future__ import annotations

import attrs

from longlive.quant.nvfp4 import BLOCK_SIZE

AMAX_BYTES = 4  # one FP32 amax per (slot, layer, K or V)


@attrs.frozen(kw_only=True)
class KVCacheBytes:
    """Bytes of one KV cache (all layers, K and V) holding `window_frames` latent frames."""

    bf16: int
    nvfp4_values: int
    nvfp4_scales: int
    nvfp4_amax: int

    @property
    def nvfp4(self) -> int:
        return self.nvfp4_values + self.nvfp4_scales + self.nvfp4_amax

    @property
    def ratio(self) -> float:
        """How many times fewer bytes NVFP4 holds than BF16."""
        return self.bf16 / self.nvfp4


def kv_cache_bytes(
    *, tokens_per_frame: int, window_frames: int, frames_per_chunk: int, layers: int, heads: int,
    head_dim: int, batch: int = 1,
) -> KVCacheBytes:
    """BF16: 2 bytes an element. NVFP4: half a byte an element, one E4M3 byte per 16 elements and
    one FP32 amax per chunk slot, layer and K or V (the window holds window/chunk slots)."""
    if head_dim % BLOCK_SIZE or window_frames % frames_per_chunk:
        raise ValueError(f"kv_cache_bytes: head_dim={head_dim} must be a multiple of {BLOCK_SIZE} and "
                         f"window_frames={window_frames} a multiple of frames_per_chunk={frames_per_chunk}")
    rows = 2 * layers * batch * tokens_per_frame * window_frames * heads  # K and V, [B, tokens, H] rows
    slots = window_frames // frames_per_chunk
    return KVCacheBytes(
        bf16=rows * head_dim * 2,
        nvfp4_values=rows * head_dim // 2,
        nvfp4_scales=rows * head_dim // BLOCK_SIZE,
        nvfp4_amax=2 * layers * slots * AMAX_BYTES,
    )
