"""WanDiT vs diffusers' WanTransformer3DModel (independent code) with weights shared through our converter."""
from __future__ import annotations

import logging

import pytest
import torch
from diffusers import WanTransformer3DModel

from longlive.errors import ConfigError
from longlive.model.attention import block_causal_mask
from longlive.model.convert import ours_to_diffusers
from longlive.model.dit import WanDiT
from longlive.model.presets import DiTConfig, dit_preset

log = logging.getLogger(__name__)


def _diffusers_model(cfg: DiTConfig) -> WanTransformer3DModel:
    """The TI2V configuration of the diffusers converter, at `cfg`'s sizes."""
    return WanTransformer3DModel(
        patch_size=cfg.patch, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=cfg.eps, added_kv_proj_dim=None,
    )


def _pair(seed: int = 0) -> tuple[WanDiT, WanTransformer3DModel]:
    torch.manual_seed(seed)
    cfg = dit_preset("debug")
    ours = WanDiT(cfg, attention="sdpa").eval()
    with torch.no_grad():
        for p in ours.parameters():  # the head weight starts at zero: perturb every parameter
            p.add_(torch.randn_like(p) * 0.02)
    theirs = _diffusers_model(cfg).eval()
    theirs.load_state_dict(ours_to_diffusers(ours.state_dict()), strict=True)
    return ours, theirs


def _ti2v_inputs(batch: int = 2):
    """Latents, per-token timesteps with latent frame 0 at t=0 (the TI2V image frame), padded text."""
    g = torch.Generator().manual_seed(5)
    cfg = dit_preset("debug")
    x = torch.randn(batch, 48, 3, 4, 6, generator=g)  # token grid (3, 2, 3)
    tokens_per_frame = 2 * 3
    t = torch.tensor([700.0, 250.0])[:batch, None].repeat(1, 3 * tokens_per_frame)
    t[:, :tokens_per_frame] = 0.0
    ctx = torch.zeros(batch, cfg.text_len, cfg.text_dim)  # zero padded to text_len, as the text encoder does
    ctx[:, :5] = torch.randn(batch, 5, cfg.text_dim, generator=g)
    return x, t, ctx


@torch.no_grad()
def test_matches_diffusers_with_per_token_timesteps():
    ours, theirs = _pair()
    x, t, ctx = _ti2v_inputs()
    a = ours(x, t, ctx)
    b = theirs(x, t, ctx, return_dict=False)[0]
    assert a.shape == b.shape == x.shape
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    log.info("DiT parity vs diffusers: max abs diff %.3g, max |out| %.3g", err, scale)
    assert scale > 0.1  # a non-degenerate output
    assert err <= 1e-5 * scale, (err, scale)


@torch.no_grad()
def test_exact_where_sinusoid_precision_agrees():
    """At t=0 the only remaining difference (diffusers' fp32 vs Wan's fp64 sinusoid) vanishes."""
    ours, theirs = _pair(seed=1)
    x, t, ctx = _ti2v_inputs()
    t = torch.zeros_like(t)
    a, b = ours(x, t, ctx), theirs(x, t, ctx, return_dict=False)[0]
    assert (a - b).abs().max().item() <= 1e-6 * b.abs().max().item()


@torch.no_grad()
def test_timestep_layouts_agree():
    ours, _ = _pair()
    x, _, ctx = _ti2v_inputs()
    t_frame = torch.tensor([[0.0, 300.0, 900.0], [10.0, 20.0, 30.0]])
    per_frame = ours(x, t_frame, ctx)
    per_token = ours(x, t_frame.repeat_interleave(6, dim=1), ctx)
    torch.testing.assert_close(per_frame, per_token, atol=1e-5, rtol=1e-5)
    scalar = ours(x, torch.tensor([400.0, 400.0]), ctx)
    torch.testing.assert_close(scalar, ours(x, torch.full((2, 3), 400.0), ctx), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_per_chunk_context_routes_each_chunk_to_its_prompt():
    ours, _ = _pair()
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 48, 4, 4, 4, generator=g)  # 2 chunks of 2 frames, 4 tokens per frame
    t = torch.full((1, 4), 600.0)
    a, b = (torch.randn(1, 16, 32, generator=g) for _ in range(2))
    mask = block_causal_mask(4, tokens_per_frame=4, frames_per_block=2)
    per_chunk = ours(x, t, torch.stack([a, b], dim=1), mask_mod=mask)
    only_a = ours(x, t, a, mask_mod=mask)
    torch.testing.assert_close(per_chunk[:, :, :2], only_a[:, :, :2])  # chunk 0 saw prompt a only
    assert (per_chunk[:, :, 2:] - only_a[:, :, 2:]).abs().max() > 1e-4  # chunk 1 saw prompt b
    embedded = ours.embed_text(torch.stack([a, b], dim=1))
    torch.testing.assert_close(per_chunk, ours(x, t, embedded, mask_mod=mask, text_embedded=True))


def test_5b_parameter_count_equals_diffusers():
    cfg = dit_preset("wan2.2-ti2v-5b")
    with torch.device("meta"):
        ours = WanDiT(cfg)
        theirs = _diffusers_model(cfg)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_theirs
    assert round(n_ours / 1e9, 3) == 5.0, n_ours
    shapes = {k: tuple(v.shape) for k, v in ours_to_diffusers(ours.state_dict()).items()}
    assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


def test_input_errors_are_config_errors():
    model = WanDiT(dit_preset("debug"), attention="sdpa")
    ctx = torch.zeros(1, 16, 32)
    with pytest.raises(ConfigError, match=r"preset 'debug' takes latents \[B, 48"):
        model(torch.zeros(1, 16, 2, 4, 4), torch.zeros(1), ctx)
    with pytest.raises(ConfigError, match="not divisible by the patch"):
        model(torch.zeros(1, 48, 2, 5, 4), torch.zeros(1), ctx)
    with pytest.raises(ConfigError, match="zero-padded to text_len"):
        model(torch.zeros(1, 48, 2, 4, 4), torch.zeros(1), torch.zeros(1, 7, 32))
    with pytest.raises(ConfigError, match="timesteps of shape"):
        model(torch.zeros(1, 48, 2, 4, 4), torch.zeros(1, 3), ctx)
    with pytest.raises(ConfigError, match="per-chunk prompts"):
        model(torch.zeros(1, 48, 3, 4, 4), torch.zeros(1), torch.zeros(1, 2, 16, 32))


def test_presets():
    assert dit_preset("wan2.2-ti2v-5b").head_dim == 128
    with pytest.raises(ConfigError, match="did you mean 'debug'"):
        dit_preset("debgu")
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        DiTConfig(dim=65, ffn_dim=8, num_layers=1, num_heads=2, in_channels=4, out_channels=4, text_dim=4,
                  text_len=4, freq_dim=8)


def test_attention_backend_is_reported_and_checked():
    assert WanDiT(dit_preset("debug"), attention="auto").attention_backend == "sdpa"
    with pytest.raises(ConfigError, match=r"model\.attention='cudnn' needs a CUDA device"):
        WanDiT(dit_preset("debug"), attention="cudnn").attention_backend
