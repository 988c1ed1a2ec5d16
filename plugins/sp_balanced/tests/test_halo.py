"""Halo encoding of a rank's latent slice: the window arithmetic, exact for the toy codec, and the
Wan2.2 VAE (tiny random weights) converging to the whole-video encode as the halo grows."""
from __future__ import annotations

import pytest
import torch

from longlive_plugins.sp_balanced.halo import encode_with_halo, halo_window


def test_window_matches_the_reference_example():
    """longlive2.md section 6.4: F = 96, sp = 4, halo 28 (pixel windows and dropped latents)."""
    windows = [halo_window(24 * r, 24 * (r + 1), 28, 4) for r in range(4)]
    assert [(w.pixel_start, w.pixel_end, w.drop) for w in windows] == [
        (0, 93, 0), (0, 189, 24), (76, 285, 29), (172, 381, 29)]


@pytest.mark.parametrize("tau", [1, 4])
@pytest.mark.parametrize("halo", [0, 1, 3])
def test_toy_codec_is_exact(tau, halo):
    from longlive_plugins.toyworld.codec import PatchCodec

    codec = PatchCodec(spatial_factor=2, temporal_factor=tau)
    frames = 8
    video = torch.rand(2, 3, 1 + tau * (frames - 1), 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    whole = codec.encode(video)
    for start, end in ((0, 2), (2, 4), (3, 8), (6, 8)):
        assert torch.equal(encode_with_halo(codec, video, start, end, halo, tau), whole[:, :, start:end])


def test_wan_vae_error_falls_with_the_halo():
    from longlive.model.vae import VAE_PRESETS, WanVAE

    torch.manual_seed(0)
    vae = WanVAE(VAE_PRESETS["debug"]).eval()
    frames = 8
    video = torch.rand(1, 3, 1 + 4 * (frames - 1), 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    whole = vae.encode(video)
    errors = []
    for halo in (0, 1, 2, 6):
        part = encode_with_halo(vae, video, 6, 8, halo, 4)
        assert torch.isfinite(part).all()
        errors.append(float((part - whole[:, :, 6:8]).norm() / whole[:, :, 6:8].norm()))
    assert errors[-1] == 0.0 or errors[-1] < errors[0] / 10, errors  # halo 6 reaches latent 0: the whole encode
    assert errors[0] > 0  # without a halo the causal history is missing
    assert torch.equal(encode_with_halo(vae, video, 0, 2, 0, 4), whole[:, :, :2])  # rank 0 needs none
