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


class _CountingCodec:
    """The toy codec, recording how many pixel frames each encode call received."""

    def __init__(self, codec) -> None:
        self.codec, self.calls = codec, []

    def encode(self, video):
        self.calls.append(video.shape[2])
        return self.codec.encode(video)


@pytest.mark.parametrize("tau", [1, 4])
def test_balanced_layout_encodes_its_slice_with_the_halo(tau):
    """TeacherForcingUlysses.encode_video (the trainer's encode): a rank's frames exact for the toy codec,
    the rest zero, the codec given only the halo window; naive and vae_encode = "whole" encode everything."""
    from longlive.parallel import ParallelMesh
    from longlive_plugins.sp_balanced.teacher import TeacherForcingUlysses
    from longlive_plugins.toyworld.codec import PatchCodec

    frames, sp = 8, 4
    video = torch.rand(1, 3, 1 + tau * (frames - 1), 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    whole = PatchCodec(spatial_factor=2, temporal_factor=tau).encode(video)
    for rank in range(sp):
        mesh = ParallelMesh(world=sp, rank=rank, sp=sp)  # no process group: encode_video sends nothing
        codec = _CountingCodec(PatchCodec(spatial_factor=2, temporal_factor=tau))
        layout = TeacherForcingUlysses(mesh, vae_halo=1, temporal_stride=tau)
        latents = layout.encode_video(codec, video)
        mine = slice(2 * rank, 2 * rank + 2)
        assert torch.equal(latents[:, :, mine], whole[:, :, mine])
        outside = torch.ones(frames, dtype=torch.bool)
        outside[mine] = False
        assert not latents[:, :, outside].any()  # zero elsewhere
        window = halo_window(2 * rank, 2 * rank + 2, 1, tau)
        assert codec.calls == [window.pixel_end - window.pixel_start] and window.encoded_latents <= 4
        for other in (TeacherForcingUlysses(mesh, training_layout="naive", vae_halo=1, temporal_stride=tau),
                      TeacherForcingUlysses(mesh, vae_halo=None, temporal_stride=tau)):
            assert torch.equal(other.encode_video(codec, video), whole)
