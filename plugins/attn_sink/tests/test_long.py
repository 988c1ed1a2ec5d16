"""Unbounded length: 1,024 latent frames with relative RoPE, sinks, cuts and re-cache in constant memory."""
from __future__ import annotations

import gc

import torch

from longlive.cache import KVCache
from longlive.prompts import PromptScript, Shot, Switch, chunk_prompts
from longlive_plugins.attn_sink import AttnSink, AttnSinkConfig
from longlive_plugins.attn_sink.tests.helpers import chunk_noise, make_loop, make_spec

FPC = 4
FRAMES = 1024
SHOT_FRAMES = 128


def test_thousand_frames_in_constant_memory(model):
    config = AttnSinkConfig(sink_frames=FPC, shot_sink_frames=FPC, rope_shift_frames=FPC, relative_rope=True,
                            recache_on_switch=True, clear_window_on_cut=True)
    plugin = AttnSink(config)
    spec = make_spec(model, 4, fpc=FPC)
    cache = KVCache(spec, policy=plugin.longlive_make_kv_policy(spec=spec))
    loop = make_loop(model, cache, plugin, steps=1)
    script = PromptScript(shot=tuple(Shot(prompt=f"shot {i}", frames=SHOT_FRAMES,
                                          switches=(Switch(at_frame=SHOT_FRAMES // 2, prompt=f"shot {i} later"),))
                                     for i in range(FRAMES // SHOT_FRAMES)))
    buffers = (cache.storage.k.data_ptr(), cache.storage.v.data_ptr(), cache.nbytes)
    bound = spec.num_slots * (FPC + config.rope_shift_frames)
    objects = {}
    with torch.no_grad():
        for chunk in chunk_prompts(script, num_frames=FRAMES, frames_per_chunk=FPC):
            x0 = loop.step(chunk, chunk_noise(chunk.index, fpc=FPC))
            assert len(plugin._latents) <= spec.num_slots
            assert max(f for f in cache.slot_frames if f is not None) < bound  # positions stay bounded
            if chunk.index in (63, 255):
                gc.collect()
                objects[chunk.index] = len(gc.get_objects())
    assert chunk.index * FPC + FPC == FRAMES
    assert (cache.storage.k.data_ptr(), cache.storage.v.data_ptr(), cache.nbytes) == buffers  # no reallocation
    assert len(cache.policy.slots) == len(cache.slot_frames) == spec.num_slots
    assert objects[255] - objects[63] < 50, objects  # no Python structure grows with the video
    assert torch.isfinite(x0).all()
