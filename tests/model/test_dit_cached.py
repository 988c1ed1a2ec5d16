"""Chunked inference with the KV cache == the full forward under the equivalent mask; teacher forcing too."""
from __future__ import annotations

import attrs
import pytest
import torch

from longlive.cache import CacheSpec, KVCache
from longlive.geometry import Geometry
from longlive.model.attention import block_causal_mask
from longlive.model.dit import WanDiT
from longlive.model.presets import dit_preset

FPC = 2  # latent frames per chunk
CHUNKS = 4


def _model(prediction: str = "velocity") -> WanDiT:
    torch.manual_seed(0)
    model = WanDiT(attrs.evolve(dit_preset("debug"), prediction=prediction), attention="sdpa").eval()
    with torch.no_grad():
        for p in model.parameters():  # the head starts at zero: perturb everything
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _cache(model: WanDiT, window_chunks: int) -> KVCache:
    geo = Geometry(height=64, width=64, temporal_stride=4, spatial_stride=16, patch_h=2, patch_w=2,
                   frames_per_chunk=FPC)
    spec = CacheSpec.for_model(model.config, geo, window_frames=window_chunks * FPC, batch=2, dtype=torch.float32)
    return KVCache(spec)


def _inputs(per_chunk_prompts: bool):
    g = torch.Generator().manual_seed(1)
    cfg = dit_preset("debug")
    x = torch.randn(2, 48, CHUNKS * FPC, 4, 4, generator=g)  # 2x2 tokens per latent frame
    t = torch.rand(2, CHUNKS * FPC, generator=g) * 1000
    shape = (2, CHUNKS, cfg.text_len, cfg.text_dim) if per_chunk_prompts else (2, cfg.text_len, cfg.text_dim)
    ctx = torch.randn(*shape, generator=g)
    return x, t, ctx


def _chunk_ctx(ctx, i):
    return ctx[:, i] if ctx.ndim == 4 else ctx


@pytest.mark.parametrize("window_chunks,per_chunk_prompts,prediction",
                         [(CHUNKS, False, "velocity"), (2, True, "velocity"), (2, True, "sample")])
@torch.no_grad()
def test_cached_chunks_equal_masked_full_forward(window_chunks, per_chunk_prompts, prediction):
    model = _model(prediction)
    x, t, ctx = _inputs(per_chunk_prompts)
    window = None if window_chunks == CHUNKS else window_chunks * FPC
    mask = block_causal_mask(CHUNKS * FPC, tokens_per_frame=4, frames_per_block=FPC, window_frames=window)
    full = model(x, t, ctx, mask_mod=mask)

    cache = _cache(model, window_chunks)
    g = torch.Generator().manual_seed(2)
    outs = []
    for i in range(CHUNKS):
        sl = slice(i * FPC, (i + 1) * FPC)
        kv = cache.begin(i)
        text = model.embed_text(_chunk_ctx(ctx, i))
        for _ in range(2):  # non-committed forwards at other inputs and timesteps: must change nothing
            model.forward_chunk(torch.randn(x[:, :, sl].shape, generator=g), torch.rand(2, FPC, generator=g) * 1000,
                                text, kv=kv, text_embedded=True)
        outs.append(model.forward_chunk(x[:, :, sl], t[:, sl], text, kv=kv, text_embedded=True))
        cache.commit(kv)
    chunked = torch.cat(outs, dim=2)
    err = (chunked - full).abs().max().item()
    assert err <= 1e-5 * max(1.0, full.abs().max().item()), err

    unmasked = model(x, t, ctx)  # the mask matters: without it later frames leak into earlier ones
    assert (unmasked[:, :, :FPC] - full[:, :, :FPC]).abs().max().item() > 1e-3


@pytest.mark.parametrize("prediction", ["velocity", "sample"])
@torch.no_grad()
def test_teacher_forcing_equals_cached_path(prediction):
    model = _model(prediction)
    g = torch.Generator().manual_seed(3)
    clean, noisy, t_noisy, ctx = (*(torch.randn(2, 48, CHUNKS * FPC, 4, 4, generator=g) for _ in range(2)),
                                  torch.rand(2, CHUNKS * FPC, generator=g) * 1000, _inputs(True)[2])
    teacher = model.forward_teacher(clean, noisy, t_noisy, ctx, frames_per_block=FPC)
    assert teacher.shape == noisy.shape

    cache = _cache(model, CHUNKS)
    for i in range(CHUNKS):
        sl = slice(i * FPC, (i + 1) * FPC)
        kv = cache.begin(i)
        pred = model.forward_chunk(noisy[:, :, sl], t_noisy[:, sl], ctx[:, i], kv=kv)
        err = (pred - teacher[:, :, sl]).abs().max().item()
        assert err <= 1e-5 * max(1.0, pred.abs().max().item()), (i, err)
        model.forward_chunk(clean[:, :, sl], torch.zeros(2, FPC), ctx[:, i], kv=kv)  # clean pass at t=0
        cache.commit(kv)


@pytest.mark.parametrize("layout", ["sample", "frame", "token"])
@torch.no_grad()
def test_sample_prediction_returns_the_velocity_of_its_x0(layout):
    """prediction="sample": same weights, head output read as x0 -> (x - x0) / max(t / 1000, 0.05)."""
    velocity, sample = _model("velocity"), _model("sample")
    sample.load_state_dict(velocity.state_dict())
    x, _, ctx = _inputs(False)  # [2, 48, 8, 4, 4]: 2x2 tokens per frame
    g = torch.Generator().manual_seed(5)
    shape = {"sample": (2,), "frame": (2, x.shape[2]), "token": (2, x.shape[2] * 4)}[layout]
    t = torch.rand(shape, generator=g) * 1000
    t.view(-1)[0] = 0.0  # a clean (context) timestep stays finite through the clip
    x0 = velocity(x, t, ctx)  # the shared head output
    if layout == "token":  # tokens in (F, h, w) order, each covering 2x2 latent pixels
        sigma = t.view(2, 1, -1, 2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4) / 1000
    else:
        sigma = t.view(2, 1, -1, 1, 1) / 1000
    want = (x - x0) / sigma.clamp(min=0.05)
    got = sample(x, t, ctx)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_teacher_clean_timestep_is_used():
    model = _model()
    g = torch.Generator().manual_seed(4)
    clean, noisy = (torch.randn(1, 48, 4, 4, 4, generator=g) for _ in range(2))
    ctx = torch.randn(1, 16, 32, generator=g)
    t = torch.full((1,), 500.0)
    base = model.forward_teacher(clean, noisy, t, ctx, frames_per_block=FPC)
    zero = model.forward_teacher(clean, noisy, t, ctx, frames_per_block=FPC, t_clean=torch.zeros(1, 4))
    torch.testing.assert_close(base, zero)  # default t_clean is 0, in any timestep layout
    other = model.forward_teacher(clean, noisy, t, ctx, frames_per_block=FPC, t_clean=torch.full((1,), 100.0))
    assert (other[:, :, FPC:] - base[:, :, FPC:]).abs().max() > 1e-4  # block 1 sees the clean block 0
    torch.testing.assert_close(other[:, :, :FPC], base[:, :, :FPC])  # block 0 sees no clean frames


@torch.no_grad()
def test_precomputed_rope_equals_default():
    model = _model()
    x, t, ctx = _inputs(False)
    sl = slice(0, FPC)
    a_cache, b_cache = _cache(model, 2), _cache(model, 2)
    kv_a, kv_b = a_cache.begin(0), b_cache.begin(0)
    a = model.forward_chunk(x[:, :, sl], t[:, sl], ctx, kv=kv_a)
    rope = model.chunk_rope((FPC, 2, 2), kv_b, "cpu")
    b = model.forward_chunk(x[:, :, sl], t[:, sl], ctx, kv=kv_b, rope=rope)
    torch.testing.assert_close(a, b)


def _graphs_for_compiled_run(num_layers: int) -> int:
    """Compile a model's blocks (dynamo only), run 5 chunks against it and eager; return the graph count."""
    from torch._dynamo.utils import counters

    from longlive.model.presets import DiTConfig

    torch._dynamo.reset()
    counters.clear()
    cfg = DiTConfig(name="deep", dim=64, ffn_dim=128, num_layers=num_layers, num_heads=2, in_channels=48,
                    out_channels=48, text_dim=32, text_len=16, freq_dim=256)
    eager = WanDiT(cfg, attention="sdpa").eval()
    compiled = WanDiT(cfg, attention="sdpa").eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks(backend="eager")  # dynamo tracing and guards without inductor (fast on CPU)
    geo = Geometry(height=64, width=64, temporal_stride=4, spatial_stride=16, patch_h=2, patch_w=2,
                   frames_per_chunk=FPC)
    ctx = torch.randn(1, 16, 32)

    def run(model):
        cache = KVCache(CacheSpec.for_model(cfg, geo, window_frames=3 * FPC, batch=1, dtype=torch.float32))
        g = torch.Generator().manual_seed(6)
        outs = []
        for i in range(5):  # warm-up (growing window), then a full window
            x = torch.randn(1, 48, FPC, 4, 4, generator=g)
            kv = cache.begin(i)
            model.forward_chunk(x, torch.full((1, FPC), 500.0), ctx, kv=kv)
            outs.append(model.forward_chunk(x, torch.zeros(1, FPC), ctx, kv=kv))
            cache.commit(kv)
        return torch.cat(outs, dim=2)

    with torch.no_grad():
        torch.testing.assert_close(run(compiled), run(eager))
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    return graphs


def test_compiled_blocks_do_not_specialise_per_layer():
    """Regional compilation: neither the layer index nor the slot plan may multiply the block graphs."""
    assert _graphs_for_compiled_run(2) == _graphs_for_compiled_run(9)
