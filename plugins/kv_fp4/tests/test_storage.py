"""NVFP4Storage: what it stores equals the NVFP4 reference; the chunk being denoised stays BF16;
bytes at the 5B geometry; generation with it stays close to the BF16 cache (any batch, CFG)."""
from __future__ import annotations

import pytest
import torch

from longlive.cache import BF16Storage, CacheSpec, ChunkPlan
from longlive.geometry import Geometry
from longlive.model.presets import DIT_PRESETS
from longlive.quant import nvfp4
from longlive_plugins.kv_fp4.storage import NVFP4Storage


def _spec(preset: str = "debug", *, batch: int = 2, slots: int = 3, device: str = "cpu", side: int = 64,
          dtype=torch.float32) -> CacheSpec:
    geo = Geometry(height=side, width=side, temporal_stride=4, spatial_stride=16, patch_h=2, patch_w=2,
                   frames_per_chunk=2)
    return CacheSpec.for_model(DIT_PRESETS[preset], geo, window_frames=2 * slots, batch=batch, dtype=dtype,
                               device=device)


def _chunk(spec: CacheSpec, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (spec.batch, spec.chunk_tokens, spec.num_heads, spec.head_dim)
    return (torch.randn(shape, generator=g) * (1 + torch.rand(spec.head_dim, generator=g) * 4)).to(spec.dtype)


@pytest.mark.parametrize("rule", ["static_6", "mse"])
def test_stored_kv_equals_the_reference_quantize_dequantize(rule):
    spec = _spec()
    storage = NVFP4Storage(spec, scale_rule=rule)
    chunks = {slot: (_chunk(spec, 2 * slot), _chunk(spec, 2 * slot + 1)) for slot in range(spec.num_slots)}
    for slot, (k, v) in chunks.items():
        storage.write(1, slot, k, v)
    k, v = storage.read(1, (2, 0))
    for got, index in ((k, 0), (v, 1)):
        want = torch.cat([nvfp4.dequantize(nvfp4.quantize(chunks[s][index], scale_rule=rule), torch.float32)
                          for s in (2, 0)], dim=1).to(spec.dtype)
        assert torch.equal(got, want)


def test_denoising_forwards_write_nothing_and_see_their_own_bf16_kv():
    spec = _spec(dtype=torch.bfloat16)
    storage = NVFP4Storage(spec)
    old = (_chunk(spec, 0), _chunk(spec, 1))
    storage.write(0, 0, *old)
    before = {kind: storage.values[kind].clone() for kind in "kv"}
    plan = ChunkPlan(chunk_index=1, working_slot=1, visible_slots=(0, 1), rope_start_frame=2)
    k, v = _chunk(spec, 2), _chunk(spec, 3)
    got_k, got_v = storage.attend(0, plan, k, v, keep=False)
    assert all(torch.equal(before[kind], storage.values[kind]) for kind in "kv")  # nothing written
    t = spec.chunk_tokens
    assert torch.equal(got_k[:, t:], k) and torch.equal(got_v[:, t:], v)  # its own K/V, not dequantized
    assert torch.equal(got_k[:, :t], storage.read(0, (0,))[0])
    storage.attend(0, plan, k, v, keep=True)  # the clean pass: quantized once, into the working slot
    assert torch.equal(storage.read(0, (1,))[0], nvfp4.dequantize(nvfp4.quantize(k), torch.float32).to(k.dtype))


def test_five_b_cache_is_at_least_3_5_times_smaller():
    """Allocated buffers of real storage objects on the meta device (1280x704, window 32, batch 1)."""
    geo = Geometry(height=704, width=1280, temporal_stride=4, spatial_stride=16, patch_h=2, patch_w=2,
                   frames_per_chunk=8)
    spec = CacheSpec.for_model(DIT_PRESETS["wan2.2-ti2v-5b"], geo, window_frames=32, batch=1,
                               dtype=torch.bfloat16, device="meta")
    bf16, fp4 = BF16Storage(spec).nbytes, NVFP4Storage(spec).nbytes
    assert bf16 == 10_380_902_400 and fp4 == 2_919_629_760  # = plugins/kv_fp4/sizes.py's arithmetic
    assert bf16 / fp4 >= 3.5


def test_a_storage_rejects_a_chunk_of_another_shape():
    storage = NVFP4Storage(_spec())
    with pytest.raises(ValueError, match="chunks of"):
        storage.write(0, 0, torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16))
