"""Re-cache on a prompt switch really rebuilds the window's K/V under the new prompt; off changes nothing."""
from __future__ import annotations

import pytest
import torch

from longlive.cache import KVCache
from longlive.prompts import PromptScript, Shot, Switch, chunk_prompts
from longlive_plugins.attn_sink import AttnSink, AttnSinkConfig
from longlive_plugins.attn_sink.tests.helpers import FPC, all_slots_kv, chunk_noise, make_loop, make_spec, slot_kv

OLD, NEW = "a red circle moves left", "a blue square moves up"


def _generate(model, config: AttnSinkConfig, *, slots: int, switch_chunk: int, chunks: int, guidance: float = 1.0):
    """Generate `chunks` chunks of one shot whose prompt switches at `switch_chunk`; returns (loop, plugin, x0s)."""
    plugin = AttnSink(config)
    spec = make_spec(model, slots, batch=2 if guidance != 1.0 else 1)
    cache = KVCache(spec, policy=plugin.longlive_make_kv_policy(spec=spec))
    loop = make_loop(model, cache, plugin)
    loop.state.guidance = guidance
    script = PromptScript(shot=(Shot(prompt=OLD, frames=chunks * FPC,
                                     switches=(Switch(at_frame=switch_chunk * FPC, prompt=NEW),)),))
    x0s = []
    with torch.no_grad():
        for chunk in chunk_prompts(script, num_frames=chunks * FPC, frames_per_chunk=FPC):
            x0s.append(loop.step(chunk, chunk_noise(chunk.index)))
            if chunk.index == switch_chunk - 1:
                before = all_slots_kv(cache)
    return loop, plugin, x0s, before


def _committed(model, loop, x0s, prompts: list[str]):
    """A fresh cache into which the clean latents x0s are committed, chunk j under prompts[j]."""
    state = loop.state
    spec = state.cache.spec
    cache = KVCache(spec, policy=AttnSink(AttnSinkConfig(sink_frames=0, shot_sink_frames=0, rope_shift_frames=0))
                    .longlive_make_kv_policy(spec=spec))
    with torch.no_grad():
        for j, (x0, prompt) in enumerate(zip(x0s, prompts)):
            kv = cache.begin(j)
            x = torch.cat([x0, x0]) if state.cfg else x0
            model.forward_chunk(x, torch.zeros(x.shape[0], FPC), state.context(prompt), kv=kv, text_embedded=True)
            cache.commit(kv)
    return cache


@pytest.mark.parametrize("recache_sink", [False, True])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_recache_rebuilds_the_window_under_the_new_prompt(model, recache_sink, guidance):
    """Switch at chunk 3 of a 4-slot window: chunks 0-2 are re-run as a fresh run with the new prompt would."""
    config = AttnSinkConfig(sink_frames=FPC, shot_sink_frames=0, recache_on_switch=True, recache_sink=recache_sink)
    loop, plugin, x0s, _ = _generate(model, config, slots=4, switch_chunk=3, chunks=4, guidance=guidance)
    cache = loop.state.cache
    ref = _committed(model, loop, x0s[:3], [OLD if j == 0 and not recache_sink else NEW for j in range(3)])
    stale = _committed(model, loop, x0s[:3], [OLD] * 3)
    for j in range(3):  # chunk j lives in slot j in both caches (warm-up fills slots in order)
        for got, want, old in zip(slot_kv(cache, j), slot_kv(ref, j), slot_kv(stale, j)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            if j > 0 or recache_sink:
                assert (got - old).abs().max() > 1e-3  # really rebuilt, not left as it was
    assert sorted(plugin._latents) == [0, 1, 2, 3]  # clean latents of the cached chunks only


@torch.no_grad()
def test_recache_off_leaves_the_cache_alone(model):
    config = AttnSinkConfig(sink_frames=FPC, shot_sink_frames=0, recache_on_switch=False)
    loop, plugin, x0s, before = _generate(model, config, slots=4, switch_chunk=3, chunks=4)
    cache = loop.state.cache
    for j in range(3):
        k, v = slot_kv(cache, j)
        assert torch.equal(k, before[j][0]) and torch.equal(v, before[j][1])
    assert plugin._latents == {}  # nothing kept when re-cache is off


@pytest.mark.parametrize("recache_sink", [False, True])
@pytest.mark.parametrize("relative", [False, True])
def test_recache_after_the_window_slid(model, recache_sink, relative):
    """Switch at chunk 9 of a 4-slot window with a sink: the window slots change; the sink only if asked."""
    config = AttnSinkConfig(sink_frames=FPC, shot_sink_frames=0, rope_shift_frames=0, recache_on_switch=True,
                            recache_sink=recache_sink, relative_rope=relative)
    loop, plugin, x0s, before = _generate(model, config, slots=4, switch_chunk=9, chunks=10)
    cache, policy = loop.state.cache, loop.state.cache.policy
    held = {s.chunk: i for i, s in enumerate(policy.slots)}
    assert sorted(held) == [0, 7, 8, 9]
    sink_slot = held[0]
    sink_same = torch.equal(slot_kv(cache, sink_slot)[1], before[sink_slot][1])
    assert sink_same != recache_sink
    for chunk in (7, 8):  # the window chunks chunk 9 sees, re-run under the new prompt
        s = held[chunk]
        assert (slot_kv(cache, s)[1] - before[s][1]).abs().max() > 1e-3
    assert len(plugin._latents) <= cache.spec.num_slots
