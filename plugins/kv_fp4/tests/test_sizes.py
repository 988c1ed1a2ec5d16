"""Bytes of the KV cache at the 5B geometry: NVFP4 holds >= 3.5x less than BF16."""
from __future__ import annotations

import pytest

from longlive.geometry import Geometry
from longlive.model.presets import dit_preset
from longlive_plugins.kv_fp4.sizes import kv_cache_bytes


def test_5b_window_bytes_nvfp4_vs_bf16():
    geometry = Geometry(height=704, width=1280, temporal_stride=4, spatial_stride=16, patch_h=2, patch_w=2,
                        frames_per_chunk=8)
    dit = dit_preset("wan2.2-ti2v-5b")
    sizes = kv_cache_bytes(tokens_per_frame=geometry.tokens_per_frame, window_frames=32,
                           frames_per_chunk=geometry.frames_per_chunk, layers=dit.num_layers,
                           heads=dit.num_heads, head_dim=dit.head_dim)
    rows = 2 * 30 * 880 * 32 * 24  # K and V x layers x tokens of 32 latent frames x heads
    assert sizes.bf16 == rows * 128 * 2 == 10_380_902_400  # longlive2.md §4.6: 10.38 GB per cache
    assert sizes.nvfp4_values == rows * 64 and sizes.nvfp4_scales == rows * 8
    assert sizes.nvfp4_amax == 2 * 30 * 4 * 4  # FP32 per (slot, layer, K/V); 4 slots of 8 frames
    assert sizes.nvfp4 == 2_919_629_760
    assert sizes.ratio >= 3.5
    assert sizes.ratio == pytest.approx(128 * 2 / (64 + 8), rel=1e-6)  # 3.56x; the amax is negligible


def test_bad_geometry_is_rejected():
    with pytest.raises(ValueError, match="head_dim=72"):
        kv_cache_bytes(tokens_per_frame=4, window_frames=8, frames_per_chunk=2, layers=1, heads=1, head_dim=72)
