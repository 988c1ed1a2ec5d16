"""Helpers of the attn_sink tests: the perturbed debug DiT, caches over it, a chunk loop with hooks."""
from __future__ import annotations

import torch

from longlive.cache import CacheSpec, KVCache
from longlive.geometry import Geometry
from longlive.model.dit import WanDiT
from longlive.model.presets import dit_preset
from longlive.pipeline import ChunkLoop, GenerationState
from longlive.registry.manager import new_plugin_manager
from longlive.sampling import fewstep_sampler
from longlive.model.random_text import RandomTextEncoder

FPC = 2  # latent frames per chunk
SIDE = 64  # pixels: debug codec stride 16, patch 2 -> 2x2 tokens per latent frame


def debug_model() -> WanDiT:
    """The debug DiT with every weight perturbed (its head starts at zero), fp32, sdpa."""
    torch.manual_seed(0)
    m = WanDiT(dit_preset("debug"), attention="sdpa").eval().requires_grad_(False)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def make_spec(model: WanDiT, window_chunks: int, batch: int = 1, fpc: int = FPC) -> CacheSpec:
    geo = Geometry(height=SIDE, width=SIDE, temporal_stride=4, spatial_stride=16, patch_h=2, patch_w=2,
                   frames_per_chunk=fpc)
    return CacheSpec.for_model(model.config, geo, window_frames=window_chunks * fpc, batch=batch, dtype=torch.float32)


def make_loop(model: WanDiT, cache: KVCache, *plugins, steps: int = 1, batch: int = 1) -> ChunkLoop:
    """A ChunkLoop with a hook relay holding `plugins` (no core plugin: the tests pass the cache)."""
    pm = new_plugin_manager()
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=f"p{i}")
    cfg = model.config
    text = RandomTextEncoder(cfg.text_dim, cfg.text_len, tokens=cfg.text_len, device=torch.device("cpu"),
                             dtype=torch.float32)
    state = GenerationState(model=model, cache=cache, sampler=fewstep_sampler(steps), encode_text=text.encode,
                            batch=batch)
    return ChunkLoop(state, pm.hook, None)


def chunk_noise(index: int, batch: int = 1, fpc: int = FPC) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + index)
    return torch.randn(batch, 48, fpc, 4, 4, generator=g)  # [B, C, f, H, W] latents of one chunk


def slot_kv(cache: KVCache, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of one slot for every layer, [layers, B, T, H, D], read through the storage API."""
    pairs = [cache.storage.read(layer, (slot,)) for layer in range(cache.spec.num_layers)]
    return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])


def all_slots_kv(cache: KVCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A copy of every slot's K and V (see slot_kv)."""
    return [tuple(t.clone() for t in slot_kv(cache, s)) for s in range(cache.spec.num_slots)]
