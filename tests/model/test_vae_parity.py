"""WanVAE vs diffusers AutoencoderKLWan (Wan2.2 settings) with weights shared through our converter."""
from __future__ import annotations

import attrs
import pytest
import torch
from diffusers import AutoencoderKLWan

from longlive.model.vae import VAE_PRESETS, WanVAE, patchify, unpatchify
from longlive.model.vae_convert import longlive_to_diffusers

TOL = 1e-5  # fp32, max abs


@pytest.fixture(scope="module")
def models():
    """Our tiny VAE with perturbed weights and non-trivial latent statistics, and its diffusers twin."""
    gen = torch.Generator().manual_seed(0)
    z = 48
    mean = tuple((torch.rand(z, generator=gen) - 0.5).tolist())
    std = tuple((torch.rand(z, generator=gen) + 0.5).tolist())
    config = attrs.evolve(VAE_PRESETS["debug"], latents_mean=mean, latents_std=std)
    torch.manual_seed(0)
    ours = WanVAE(config).eval()
    with torch.no_grad():  # move norms' gammas off 1 so that swapped norm weights would show
        for p in ours.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    ref = AutoencoderKLWan(
        base_dim=config.base_dim, decoder_base_dim=config.decoder_base_dim, z_dim=z,
        dim_mult=list(config.dim_mult), num_res_blocks=config.num_res_blocks,
        temperal_downsample=list(config.temporal_downsample), is_residual=True,
        in_channels=config.patch_channels, out_channels=config.patch_channels, patch_size=config.patch_size,
        scale_factor_temporal=config.temporal_stride, scale_factor_spatial=config.spatial_stride,
        latents_mean=list(mean), latents_std=list(std),
    ).eval()
    ref.load_state_dict(longlive_to_diffusers(ours.state_dict(), num_res_blocks=config.num_res_blocks), strict=True)
    stats = (torch.tensor(mean).view(1, z, 1, 1, 1), torch.tensor(std).view(1, z, 1, 1, 1))
    return ours, ref, stats


def test_encode_matches_diffusers(models):
    ours, ref, (mean, std) = models
    video = torch.rand(2, 3, 9, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latents = ours.encode(video)
    with torch.no_grad():
        expected = (ref.encode(video).latent_dist.mean - mean) / std
    assert latents.shape == (2, 48, 3, 2, 3)
    err = (latents - expected).abs().max().item()
    assert err <= TOL, f"encode max abs diff {err:.2e}"


def test_decode_matches_diffusers(models):
    ours, ref, (mean, std) = models
    latents = torch.randn(2, 48, 5, 2, 3, generator=torch.Generator().manual_seed(2))
    video = ours.decode(latents)
    with torch.no_grad():
        expected = ref.decode(latents * std + mean).sample
    assert video.shape == (2, 3, 17, 32, 48)
    assert (expected.abs() < 1).float().mean() > 0.5, "output mostly clamped: the comparison would be vacuous"
    err = (video - expected).abs().max().item()
    assert err <= TOL, f"decode max abs diff {err:.2e}"


def test_patchify_matches_diffusers_layout():
    from diffusers.models.autoencoders.autoencoder_kl_wan import patchify as ref_patchify

    video = torch.randn(1, 3, 2, 8, 12)
    assert torch.equal(patchify(video, 2), ref_patchify(video, 2))
    assert torch.equal(unpatchify(patchify(video, 2), 2), video)


def test_bf16_runs_close_to_fp32(models):
    ours, _, _ = models
    low = WanVAE(ours.config).eval()
    low.load_state_dict(ours.state_dict())
    low = low.to(torch.bfloat16)
    latents = torch.randn(1, 48, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    video = low.decode(latents)
    assert video.dtype == torch.bfloat16 and video.shape == (1, 3, 9, 32, 32)
    assert (video.float() - ours.decode(latents)).abs().mean() < 0.02
    encoded = low.encode(video)
    assert encoded.dtype == torch.bfloat16
    assert (encoded.float() - ours.encode(video.float())).abs().mean() < 0.02
