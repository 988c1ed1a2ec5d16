"""KV cache: fixed slots written in place, window eviction order, plan/commit visibility, memory."""
from __future__ import annotations

import pytest
import torch

from longlive.cache import BF16Storage, CachePolicy, CacheSpec, ChunkPlan, KVCache, KVStorage, SlidingWindowPolicy
from longlive.errors import ConfigError, LongLiveError
from longlive.geometry import Geometry
from longlive.model.presets import dit_preset


def _spec(num_slots=3, layers=2, batch=1, heads=2, head_dim=4, chunk_tokens=6, dtype=torch.float32):
    return CacheSpec(num_layers=layers, batch=batch, num_heads=heads, head_dim=head_dim, chunk_tokens=chunk_tokens,
                     frames_per_chunk=2, num_slots=num_slots, dtype=dtype, device="cpu")


def _chunk(spec, value):
    shape = (spec.batch, spec.chunk_tokens, spec.num_heads, spec.head_dim)
    return torch.full(shape, float(value)), torch.full(shape, -float(value))


def test_spec_from_model_and_geometry():
    geo = Geometry(height=704, width=1280, temporal_stride=4, spatial_stride=16, patch_h=2, patch_w=2,
                   frames_per_chunk=8)
    spec = CacheSpec.for_model(dit_preset("wan2.2-ti2v-5b"), geo, window_frames=32, batch=1, device="meta")
    assert (spec.num_slots, spec.chunk_tokens, spec.tokens) == (4, 8 * 880, 32 * 880)
    assert (spec.num_layers, spec.num_heads, spec.head_dim) == (30, 24, 128)
    storage = BF16Storage(spec)  # on meta: no allocation, but exact byte count
    assert storage.nbytes == 2 * 30 * 28160 * 24 * 128 * 2  # 10.38 GB, as in the reference notes
    with pytest.raises(ConfigError, match="window_frames=20"):
        CacheSpec.for_model(dit_preset("debug"), geo, window_frames=20, batch=1)


def test_protocols_are_satisfied_by_defaults():
    spec = _spec()
    assert isinstance(BF16Storage(spec), KVStorage)
    assert isinstance(SlidingWindowPolicy(3, 2), CachePolicy)


def test_nbytes():
    spec = _spec(num_slots=3, layers=2, batch=2, heads=2, head_dim=4, chunk_tokens=6, dtype=torch.bfloat16)
    assert KVCache(spec).nbytes == 2 * (2 * 2 * 18 * 2 * 4) * 2


def test_window_eviction_order_and_rope_positions():
    policy = SlidingWindowPolicy(num_slots=3, frames_per_chunk=2)
    seen = []
    for i in range(7):
        plan = policy.plan(i)
        seen.append((plan.working_slot, plan.visible_slots, plan.rope_start_frame))
        policy.commit(plan)
    assert seen == [
        (0, (0,), 0), (1, (0, 1), 2), (2, (0, 1, 2), 4),
        (0, (0, 1, 2), 6), (1, (0, 1, 2), 8), (2, (0, 1, 2), 10), (0, (0, 1, 2), 12),
    ]


def test_plan_out_of_order_is_an_error_and_reset_restarts():
    cache = KVCache(_spec())
    kv = cache.begin(0)
    with pytest.raises(LongLiveError, match="next chunk is 0"):
        cache.begin(1)
    cache.commit(kv)
    cache.reset()
    assert cache.begin(0).plan.visible_slots == (0,)
    other = KVCache(_spec())
    with pytest.raises(LongLiveError, match="another cache"):
        other.commit(cache.begin(0))


def test_slots_are_written_in_place_and_reads_are_views():
    spec = _spec()
    cache = KVCache(spec)
    k_ptr, v_ptr = cache.storage.k.data_ptr(), cache.storage.v.data_ptr()
    for i in range(5):
        kv = cache.begin(i)
        for step in range(3):  # denoising steps, then the clean pass
            for layer in range(spec.num_layers):
                k_vis, v_vis = kv.attend_kv(layer, *_chunk(spec, 100 * i + step))
                assert k_vis.untyped_storage().data_ptr() == k_ptr  # a view into the one buffer
                assert v_vis.untyped_storage().data_ptr() == v_ptr
                assert k_vis.shape[1] == len(kv.plan.visible_slots) * spec.chunk_tokens
        cache.commit(kv)
    assert (cache.storage.k.data_ptr(), cache.storage.v.data_ptr()) == (k_ptr, v_ptr)


def test_uncommitted_writes_are_invisible_to_other_chunks():
    spec = _spec(num_slots=2, layers=1)
    cache = KVCache(spec)
    for i in range(4):
        kv = cache.begin(i)
        k_vis, v_vis = kv.attend_kv(0, *_chunk(spec, 1000 + i))  # a noisy step: scratch slot only
        slot_tokens = slice(kv.plan.working_slot * spec.chunk_tokens, (kv.plan.working_slot + 1) * spec.chunk_tokens)
        for s in kv.plan.visible_slots:  # every other visible slot holds a committed (clean) chunk
            if s != kv.plan.working_slot:
                span = slice(s * spec.chunk_tokens, (s + 1) * spec.chunk_tokens)
                assert k_vis[:, span].unique().tolist() == [float(i - 1)]
        assert k_vis[:, slot_tokens].unique().tolist() == [1000.0 + i]
        k_vis, v_vis = kv.attend_kv(0, *_chunk(spec, i))  # the clean pass overwrites the scratch slot
        assert k_vis[:, slot_tokens].unique().tolist() == [float(i)]
        assert v_vis[:, slot_tokens].unique().tolist() == [-float(i)]
        cache.commit(kv)


def test_non_contiguous_slot_sets_are_copied():
    spec = _spec(num_slots=3, layers=1)
    storage = BF16Storage(spec)
    for s in range(3):
        storage.write(0, s, *_chunk(spec, s))
    k, v = storage.read(0, (2, 0))
    assert k.untyped_storage().data_ptr() != storage.k.data_ptr()
    assert sorted(k[0, :, 0, 0].unique().tolist()) == [0.0, 2.0] and k.shape[1] == 2 * spec.chunk_tokens
    k, _ = storage.read(0, (1, 2))
    assert k.untyped_storage().data_ptr() == storage.k.untyped_storage().data_ptr()


def test_custom_policy_plugs_in():
    class PinFirst:
        """Slot 0 keeps chunk 0 forever (a sink); slot 1 is the working slot of every later chunk."""

        def __init__(self):
            self.committed = 0

        def plan(self, chunk_index):
            if chunk_index == 0:
                return ChunkPlan(0, 0, (0,), 0)
            return ChunkPlan(chunk_index, 1, (0, 1), 2 * chunk_index)

        def commit(self, plan):
            self.committed += 1

        def reset(self):
            self.committed = 0

    spec = _spec(num_slots=2, layers=1)
    cache = KVCache(spec, policy=PinFirst())
    for i in range(3):
        kv = cache.begin(i)
        k_vis, _ = kv.attend_kv(0, *_chunk(spec, i))
        cache.commit(kv)
    assert k_vis[0, :, 0, 0].unique().tolist() == [0.0, 2.0]


def test_wrong_chunk_shape_is_a_config_error():
    spec = _spec()
    kv = KVCache(spec).begin(0)
    k = torch.zeros(1, spec.chunk_tokens + 1, spec.num_heads, spec.head_dim)
    with pytest.raises(ConfigError, match="same geometry"):
        kv.attend_kv(0, k, k)
