"""Numerics of the sink policy on the debug DiT (fp32, CPU): the equivalent mask, relative RoPE, identity."""
from __future__ import annotations

import json

import attrs
import pytest
import torch

from longlive.cache import KVCache
from longlive.model.rope import apply_rope, rope_tables
from longlive_plugins.attn_sink.policy import SinkPolicy
from longlive_plugins.attn_sink.tests.helpers import FPC, make_spec, slot_kv

TOKENS_PER_FRAME = 4  # 2x2 tokens per latent frame at 64x64 px


@attrs.frozen
class ChunkVisibilityMask:
    """Token mask from a chunk-level table: query chunk q sees key chunk k iff rows[q][k]."""

    rows: tuple[tuple[bool, ...], ...]
    tokens_per_chunk: int

    def __call__(self, b, h, q_idx, kv_idx):
        table = torch.tensor(self.rows, device=q_idx.device)  # [chunks, chunks]
        return table[q_idx // self.tokens_per_chunk, kv_idx // self.tokens_per_chunk]


def _inputs(chunks: int, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 48, chunks * FPC, 4, 4, generator=g)  # [B, C, F, H, W]
    t = torch.rand(batch, chunks * FPC, generator=g) * 1000  # [B, F]
    ctx = torch.randn(batch, chunks, 16, 32, generator=g)  # one prompt per chunk [B, n, text_len, text_dim]
    return x, t, ctx


def _chunked(model, policy: SinkPolicy, shots: dict[int, int], chunks: int, *, window_chunks: int, batch: int = 2):
    """Chunk outputs through the cache; per chunk two throw-away forwards, then the clean-pass ChunkKV's."""
    x, t, ctx = _inputs(chunks, batch)
    cache = KVCache(make_spec(model, window_chunks, batch=batch), policy=policy)
    g = torch.Generator().manual_seed(2)
    outs, rows = [], []
    for i in range(chunks):
        if i in shots:
            policy.start_shot(shots[i], i)
        sl = slice(i * FPC, (i + 1) * FPC)
        kv = cache.begin(i)
        text = model.embed_text(ctx[:, i])
        for _ in range(2):  # denoising-like forwards at other inputs: they must change nothing later chunks read
            model.forward_chunk(torch.randn(x[:, :, sl].shape, generator=g), torch.rand(batch, FPC, generator=g) * 1000,
                                text, kv=kv, text_embedded=True)
        seen = set(policy.context_chunks(i))
        rows.append(tuple(k in seen for k in range(chunks)))
        outs.append(model.forward_chunk(x[:, :, sl], t[:, sl], text, kv=cache.context(kv), text_embedded=True))
        cache.commit(cache.context(kv))
    return torch.cat(outs, dim=2), tuple(rows), cache


@pytest.mark.parametrize("clear", [False, True])
@torch.no_grad()
def test_chunked_with_sinks_equals_one_masked_forward(model, clear):
    """RoPE shift 0: the full forward places chunk i at frames i*FPC, as the absolute policy does then."""
    chunks, shots = 9, {0: 0, 3: 1, 5: 2, 6: 3}
    policy = SinkPolicy(num_slots=4, frames_per_chunk=FPC, sink_chunks=1, shot_sink_chunks=1,
                        clear_window_on_cut=clear)
    chunked, rows, _ = _chunked(model, policy, shots, chunks, window_chunks=4)
    assert any(not all(r[: i + 1]) for i, r in enumerate(rows))  # the mask is not plain causal
    x, t, ctx = _inputs(chunks)
    full = model(x, t, ctx, mask_mod=ChunkVisibilityMask(rows, TOKENS_PER_FRAME * FPC))
    err = (chunked - full).abs().max().item()
    assert err <= 1e-5 * max(1.0, full.abs().max().item()), err
    window_only = tuple(tuple(j <= i and j > i - 4 for j in range(chunks)) for i in range(chunks))
    plain = model(x, t, ctx, mask_mod=ChunkVisibilityMask(window_only, TOKENS_PER_FRAME * FPC))
    assert (plain - full).abs().max().item() > 1e-3  # the sinks matter


@torch.no_grad()
def test_relative_rope_without_sinks_equals_absolute(model):
    chunks, shots = 10, {0: 0, 2: 1, 3: 2, 7: 3}
    outs = {}
    for relative in (False, True):
        policy = SinkPolicy(num_slots=3, frames_per_chunk=FPC, rope_shift_frames=4, relative_rope=relative)
        outs[relative], _, cache = _chunked(model, policy, shots, chunks, window_chunks=3)
    err = (outs[True] - outs[False]).abs().max().item()
    assert err <= 1e-5 * max(1.0, outs[False].abs().max().item()), err
    assert max(cache.slot_frames) <= 2 * (FPC + 4)  # relative positions stay small


@torch.no_grad()
def test_relative_rope_turns_cached_keys_to_their_new_positions(model):
    """Every cached key equals its committed value turned by (position now - position when written)."""
    policy = SinkPolicy(num_slots=4, frames_per_chunk=FPC, sink_chunks=1, shot_sink_chunks=1, rope_shift_frames=3,
                        relative_rope=True)
    cache = KVCache(make_spec(model, 4, batch=1), policy=policy)
    shots = {0: 0, 4: 1, 9: 2}
    written: dict[int, tuple[int, torch.Tensor]] = {}  # chunk -> (frame at commit, keys [layers, 1, T, H, D])
    g = torch.Generator().manual_seed(5)
    ctx = model.embed_text(torch.randn(1, 16, 32, generator=g))
    moved = 0
    for i in range(14):
        if i in shots:
            policy.start_shot(shots[i], i)
        kv = cache.begin(i)
        frames = dict(zip(kv.plan.visible_slots, kv.plan.slot_rope_frames))
        for s in kv.plan.visible_slots:
            if s == kv.plan.working_slot:
                continue
            chunk = policy.slots[s].chunk
            frame0, keys0 = written[chunk]
            assert cache.slot_frames[s] == frames[s]
            cos, sin = rope_tables(1, 1, 1, model.config.head_dim, start_frame=frames[s] - frame0)
            torch.testing.assert_close(slot_kv(cache, s)[0], apply_rope(keys0, cos, sin), atol=1e-5, rtol=1e-5)
            moved += frames[s] != frame0
        model.forward_chunk(torch.randn(1, 48, FPC, 4, 4, generator=g), torch.zeros(1, FPC), ctx, kv=kv,
                            text_embedded=True)
        cache.commit(kv)
        written[i] = (kv.plan.rope_start_frame, slot_kv(cache, kv.plan.working_slot)[0].clone())
    assert moved > 10  # keys really were turned
    assert max(cache.slot_frames) <= 3 * (FPC + 3)


def test_identity_generation_equals_the_core(tmp_path):
    """attn_sink at its neutral setting generates exactly what the core's plain window generates."""
    from pathlib import Path

    from longlive.cli import main
    from longlive.latent_sink import read_latents

    experiment = Path(__file__).parents[3] / "experiments" / "debug_generate.toml"
    base = ["run", str(experiment), "--set", "generate.save_latents=true", "--set", "sampler.num_frames=12",
            "--set", "sampler.window_frames=6", "--set", "generate.prompt_script=\"" + str(_script(tmp_path)) + "\""]
    neutral = ["--set", 'run.plugins=["attn_sink"]', "--set", "plugins.attn_sink.sink_frames=0",
               "--set", "plugins.attn_sink.shot_sink_frames=0", "--set", "plugins.attn_sink.rope_shift_frames=0"]
    sinks = ["--set", 'run.plugins=["attn_sink"]', "--set", "plugins.attn_sink.sink_frames=2",
             "--set", "plugins.attn_sink.shot_sink_frames=2"]
    for name, extra in (("core", []), ("neutral", neutral), ("sinks", sinks)):
        assert main([*base, *extra, "--run-dir", str(tmp_path / name)]) == 0
    core, neutral_, sinks_ = (read_latents(tmp_path / n / "latents") for n in ("core", "neutral", "sinks"))
    assert torch.equal(core, neutral_)
    assert not torch.allclose(core, sinks_)  # the sinks do change what is generated
    assert "sink_frames = 0" in (tmp_path / "neutral" / "experiment.toml").read_text()
    assert json.loads((tmp_path / "sinks" / "result.json").read_text())["latent_frames"] == 12


def _script(tmp_path):
    path = tmp_path / "three_shots.toml"
    path.write_text("\n".join(f'[[shot]]\nprompt = "shot {i}"\nframes = 4\n' for i in range(3)))
    return path


def test_rotate_keys_moves_roped_keys_to_another_frame(model):
    """Independent of the policy: keys roped at frame a, turned by d, equal the same keys roped at a + d."""
    cache = KVCache(make_spec(model, 2, batch=1))
    head_dim, heads = model.config.head_dim, model.config.num_heads
    g = torch.Generator().manual_seed(7)
    raw = torch.randn(1, cache.spec.chunk_tokens, heads, head_dim, generator=g)  # unroped keys [B, T, H, D]
    grid = (FPC, 2, 2)  # (frames, height tokens, width tokens) of one chunk
    for a, d in ((6, 5), (40, -37), (0, 1000)):
        v = torch.randn(raw.shape, generator=g)
        for layer in range(cache.spec.num_layers):
            cache.storage.write(layer, 1, apply_rope(raw, *rope_tables(*grid, head_dim, start_frame=a)), v)
        cache.rotate_keys(1, d)
        want = apply_rope(raw, *rope_tables(*grid, head_dim, start_frame=a + d))
        for layer in range(cache.spec.num_layers):
            k, v_read = cache.storage.read(layer, (1,))
            torch.testing.assert_close(k, want, atol=2e-5, rtol=1e-5)
            assert torch.equal(v_read, v)
