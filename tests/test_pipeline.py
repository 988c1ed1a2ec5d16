"""The chunk loop against one whole-video forward, and the CFG cache rule."""
from __future__ import annotations

import torch

from longlive.cache import CacheSpec, KVCache
from longlive.geometry import Geometry
from longlive.model.attention import block_causal_mask
from longlive.pipeline import ChunkLoop, GenerationState
from longlive.prompts import chunk_prompts, single_prompt
from longlive.registry.manager import new_plugin_manager
from longlive.sampling import unipc_sampler


class _Recorder:
    """Wraps the model and keeps the outputs of every clean context pass (t = 0)."""

    def __init__(self, model):
        self.model, self.clean_outputs = model, []

    def embed_text(self, context):
        return self.model.embed_text(context)

    def forward_chunk(self, x, t, context, **kw):
        out = self.model.forward_chunk(x, t, context, **kw)
        if bool((t == 0).all()):
            self.clean_outputs.append(out)
        return out


def _loop(model, window_frames, chunks, fpc=2, guidance=1.0):
    geo = Geometry(height=64, width=64, temporal_stride=4, spatial_stride=8, patch_h=2, patch_w=2,
                   frames_per_chunk=fpc)
    spec = CacheSpec.for_model(model.config, geo, window_frames=window_frames, batch=2 if guidance != 1 else 1,
                               dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    text = torch.randn(2, model.config.text_len, model.config.text_dim, generator=g)
    state = GenerationState(model=_Recorder(model), cache=KVCache(spec), sampler=unipc_sampler(2),
                            encode_text=lambda prompts: text[: len(prompts)], batch=1, guidance=guidance,
                            negative_prompt="")
    noise = torch.randn(1, 48, chunks * fpc, 8, 8, generator=g)
    schedule = chunk_prompts(single_prompt("p", chunks * fpc), num_frames=chunks * fpc, frames_per_chunk=fpc)
    loop = ChunkLoop(state, new_plugin_manager().hook, run=None)
    x0 = torch.cat([loop.step(c, noise[:, :, c.index * fpc:(c.index + 1) * fpc]) for c in schedule], dim=2)
    return state, x0, text, geo


def test_chunked_generation_equals_one_windowed_forward(tiny_model):
    """Every clean context pass of the loop equals one forward over the whole generated video
    under the windowed block-causal mask: plan, eviction and commit are exactly a sliding window."""
    chunks, fpc, window = 6, 2, 4  # a 2-slot cache: chunks are evicted from chunk 2 on
    state, x0, text, geo = _loop(tiny_model, window, chunks, fpc)
    with torch.no_grad():
        full = tiny_model(x0, torch.zeros(1, chunks * fpc), text[:1],
                          mask_mod=block_causal_mask(chunks * fpc, geo.tokens_per_frame, fpc, window_frames=window))
    chunked = torch.cat(state.model.clean_outputs, dim=2)
    assert torch.isfinite(chunked).all()
    assert (chunked - full).abs().max().item() <= 1e-5 * max(1.0, full.abs().max().item())


def test_cfg_cache_exists_only_with_guidance(tiny_model):
    state, _, _, _ = _loop(tiny_model, 4, 2)
    assert state.cache.spec.batch == 1
    state_cfg, x0, _, _ = _loop(tiny_model, 4, 2, guidance=3.0)
    assert state_cfg.cache.spec.batch == 2 and torch.isfinite(x0).all()
    assert state_cfg.cache.nbytes == 2 * state.cache.nbytes
