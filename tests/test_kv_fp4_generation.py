"""kv_fp4 through the real assembly: generation close to the BF16 cache with batch 2 and CFG, the
role conflict with another storage, and 1,024 latent frames of relative RoPE + sinks + re-cache
with the NVFP4 cache in constant memory (the core, attn_sink and kv_fp4 together)."""
from __future__ import annotations

import gc

import pytest
import torch

from debug_experiment import DEBUG_EXPERIMENT
from longlive.assembly import build_model, build_sampler, build_text_encoder, new_chunk_loop
from longlive.config import experiment_from_table
from longlive.errors import ConfigError
from longlive.pipeline import chunk_noise
from longlive.prompts import PromptScript, Shot, Switch, chunk_prompts
from longlive.run import make_run


def _run(plugins, sampler=None, tables=None):
    table = {k: dict(v) for k, v in DEBUG_EXPERIMENT.items()}
    table["run"]["plugins"] = plugins
    table["sampler"].update(sampler or {})
    table["plugins"] = tables or {}
    return make_run(experiment_from_table(table), create_dir=False)


def _generate(run, script, batch=1, model=None):
    model = model or build_model(run)
    loop = new_chunk_loop(run, model=model, sampler=build_sampler(run), text=build_text_encoder(run),
                          geometry=run.geometry, batch=batch)
    s = run.experiment.sampler
    shape = run.geometry.latent_shape(s.frames_per_chunk, 48, batch)
    with torch.inference_mode():
        return [loop.step(c, chunk_noise(shape, c.index, 0, run.device, run.dtype))
                for c in chunk_prompts(script, num_frames=script.total_frames, frames_per_chunk=s.frames_per_chunk)], loop


@pytest.mark.parametrize("rule", ["static_6", "mse"])
@pytest.mark.parametrize("batch,guidance", [(1, 1.0), (2, 1.0), (2, 3.0)])
def test_generation_with_the_nvfp4_cache_stays_close_to_bf16(rule, batch, guidance):
    sampler = {"num_frames": 12, "window_frames": 6, "guidance": guidance}
    script = PromptScript(shot=(Shot(prompt="a red circle", frames=12),))
    ref, _ = _generate(_run([], sampler), script, batch)
    got, loop = _generate(_run(["kv_fp4"], sampler, {"kv_fp4": {"scale_rule": rule}}), script, batch)
    assert type(loop.state.cache.storage).__name__ == "NVFP4Storage"
    assert loop.state.cache.spec.batch == batch * (2 if guidance != 1.0 else 1)
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        err = float((a - b).norm() / b.norm())
        assert err < 0.1, f"chunk error {err:.3f} against the BF16 cache"
    assert float((got[-1] - ref[-1]).norm() / ref[-1].norm()) > 0  # the storage really quantizes


def test_two_kv_storages_are_refused():
    with pytest.raises(ConfigError, match="'kv_fp4' and 'conflicting_plugins:StorageA' both provide the KV-cache "
                                          "storage|'conflicting_plugins:StorageA' and 'kv_fp4' both provide"):
        _run(["kv_fp4", "conflicting_plugins:StorageA"])


def test_thousand_frames_relative_rope_sinks_and_nvfp4_in_constant_memory():
    sinks = {"sink_frames": 2, "shot_sink_frames": 2, "rope_shift_frames": 2, "relative_rope": True,
             "recache_on_switch": True, "clear_window_on_cut": True}
    run = _run(["attn_sink", "kv_fp4"], {"num_frames": 1024, "window_frames": 8, "steps": 1},
               {"attn_sink": sinks, "kv_fp4": {"scale_rule": "mse"}})
    script = PromptScript(shot=tuple(Shot(prompt=f"shot {i}", frames=128, switches=(Switch(at_frame=64, prompt=f"b{i}"),))
                                     for i in range(8)))
    model = build_model(run)
    loop = new_chunk_loop(run, model=model, sampler=build_sampler(run), text=build_text_encoder(run),
                          geometry=run.geometry)
    cache = loop.state.cache
    buffers = (cache.storage.values["k"].data_ptr(), cache.nbytes)
    shape = run.geometry.latent_shape(2, 48, 1)
    objects = {}
    with torch.inference_mode():
        for chunk in chunk_prompts(script, num_frames=1024, frames_per_chunk=2):
            x0 = loop.step(chunk, chunk_noise(shape, chunk.index, 0, run.device, run.dtype))
            assert max(f for f in cache.slot_frames if f is not None) < cache.spec.num_slots * 4  # bounded RoPE
            if chunk.index in (127, 447):
                gc.collect()
                objects[chunk.index] = len(gc.get_objects())
    assert chunk.index == 511 and torch.isfinite(x0).all()
    assert (cache.storage.values["k"].data_ptr(), cache.nbytes) == buffers  # no reallocation
    assert objects[447] - objects[127] < 50, objects  # nothing grows with the video
