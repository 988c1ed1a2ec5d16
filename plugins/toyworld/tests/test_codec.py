"""PatchCodec: lossless, matches a plain loop reference, streams like whole videos, clear errors."""
from __future__ import annotations

import pytest
import torch

from longlive.errors import ConfigError
from longlive_plugins.toyworld.codec import PatchCodec
from longlive_plugins.toyworld.world import sample_clip

PRESETS = [(4, 1), (2, 4)]  # (spatial, temporal): both 48 channels


def _video(frames: int, h: int = 16, w: int = 24, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, h, w, generator=g) * 2 - 1  # [B, 3, T, H, W]


def _reference_encode(video: torch.Tensor, s: int, tau: int) -> torch.Tensor:
    """Plain loops: latent channel (t, c, p, q) at (f, i, j) is pixel (c, frame, i*s+p, j*s+q)."""
    b, _, t_len, h, w = video.shape
    f_len = t_len if tau == 1 else 1 + (t_len - 1) // tau
    out = torch.empty(b, 3 * tau * s * s, f_len, h // s, w // s)
    for f in range(f_len):
        for t in range(tau):
            frame = 0 if (tau > 1 and f == 0) else (f * tau + t if tau == 1 else 1 + (f - 1) * tau + t)
            for c in range(3):
                for p in range(s):
                    for q in range(s):
                        out[:, ((t * 3 + c) * s + p) * s + q, f] = video[:, c, frame, p::s, q::s]
    return out


@pytest.mark.parametrize("s,tau", PRESETS)
def test_round_trip_is_lossless_and_matches_the_reference(s, tau):
    codec = PatchCodec(s, tau)
    assert (codec.latent_channels, codec.spatial_stride, codec.temporal_stride) == (48, s, tau)
    video = _video(1 + 2 * tau)
    latents = codec.encode(video)
    assert latents.shape == (2, 48, 3, 16 // s, 24 // s) and latents.dtype == torch.float32
    assert torch.equal(latents, _reference_encode(video, s, tau))
    assert torch.equal(codec.decode(latents), video)  # bit for bit


@pytest.mark.parametrize("s,tau", PRESETS)
def test_rendered_toy_clip_survives_uint8_round_trip(s, tau):
    clip = sample_clip(3, num_shots=2, frames=1 + 4 * tau, size=32)
    video = torch.from_numpy(clip.video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # [1, 3, T, H, W]
    back = PatchCodec(s, tau).decode(PatchCodec(s, tau).encode(video))
    pixels = ((back[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert (pixels == clip.video).all()


@pytest.mark.parametrize("s,tau", PRESETS)
def test_streaming_equals_whole(s, tau):
    codec = PatchCodec(s, tau)
    video = _video(1 + 6 * tau, seed=1)
    latents = codec.encode(video)  # 7 latent frames
    state, parts, start = codec.encode_stream(), [], 0
    for n in (1 + tau, 2 * tau, 3 * tau):  # first chunk 1 + tau*k frames, later tau*k
        parts.append(codec.encode_chunk(state, video[:, :, start:start + n]))
        start += n
    assert torch.equal(torch.cat(parts, dim=2), latents)
    state, frames, start = codec.decode_stream(), [], 0
    for n in (1, 2, 4):  # latent chunks
        frames.append(codec.decode_chunk(state, latents[:, :, start:start + n]))
        start += n
    assert [f.shape[2] for f in frames] == [1, 2 * tau, 4 * tau]  # first latent -> 1 frame
    assert torch.equal(torch.cat(frames, dim=2), codec.decode(latents))


def test_first_latent_decodes_to_the_mean_of_its_copies():
    s, tau = 2, 4
    latents = torch.randn(1, 48, 2, 4, 4) * 0.5
    video = PatchCodec(s, tau).decode(latents)
    assert video.shape == (1, 3, 1 + tau, 8, 8)
    copies = latents[:, :, 0].reshape(1, tau, 3, s, s, 4, 4)  # channels (t, c, p, q)
    expected = copies.mean(1).permute(0, 1, 4, 2, 5, 3).reshape(1, 3, 8, 8).clamp(-1, 1)  # [B, 3, H, W]
    torch.testing.assert_close(video[:, :, 0], expected, rtol=0, atol=1e-6)


def test_dtype_follows_to():
    codec = PatchCodec(4, 1).to(torch.float64)
    assert codec.dtype == torch.float64 and list(codec.parameters()) == []
    assert codec.encode(_video(2)).dtype == torch.float64


def test_errors_name_the_problem():
    codec = PatchCodec(2, 4)
    with pytest.raises(ConfigError, match="not divisible by spatial_factor=2"):
        codec.encode(_video(5, h=15))
    with pytest.raises(ConfigError, match=r"needs 1 \+ 4\*k frames"):
        codec.encode(_video(4))
    state = codec.encode_stream()
    codec.encode_chunk(state, _video(1))
    with pytest.raises(ConfigError, match="positive multiple of 4"):
        codec.encode_chunk(state, _video(3))
    with pytest.raises(ConfigError, match="started with"):
        codec.encode_chunk(state, _video(4, batch=1))
    with pytest.raises(ConfigError, match="expected \\[B, 48"):
        codec.decode(torch.zeros(1, 12, 2, 4, 4))
    with pytest.raises(ConfigError, match="'encode' stream"):
        codec.decode_chunk(codec.encode_stream(), torch.zeros(1, 48, 1, 4, 4))
    with pytest.raises(ConfigError, match="0 latent frames"):
        codec.decode(torch.zeros(1, 48, 0, 4, 4))
