"""Streaming encode/decode with explicit state objects equals whole-video encode/decode, bit for bit."""
from __future__ import annotations

import pytest
import torch

from longlive.errors import ConfigError
from longlive.model.vae import VAE_PRESETS, WanVAE


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    torch.manual_seed(0)
    model = WanVAE(VAE_PRESETS["debug"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(1, 48, 9, 2, 2, generator=torch.Generator().manual_seed(1))  # 9 latents -> 33 frames


@pytest.fixture(scope="module")
def whole(vae, latents) -> torch.Tensor:
    return vae.decode(latents)


def _split(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    assert sum(sizes) == x.shape[2]
    return list(torch.split(x, sizes, dim=2))


def test_whole_decode_shape(whole):
    assert whole.shape == (1, 3, 33, 32, 32)
    assert whole.abs().max() <= 1.0


@pytest.mark.parametrize("chunk", [1, 2, 8])
def test_stream_decode_equals_whole(vae, latents, whole, chunk):
    state = vae.decode_stream()
    pieces = [vae.decode_chunk(state, part) for part in torch.split(latents, chunk, dim=2)]
    assert pieces[0].shape[2] == 1 + 4 * (min(chunk, 9) - 1)
    assert all(p.shape[2] == 4 * q.shape[2] for p, q in zip(pieces[1:], torch.split(latents, chunk, dim=2)[1:]))
    assert torch.equal(torch.cat(pieces, dim=2), whole)


def test_streams_are_independent(vae, latents, whole):
    """Two interleaved streams on one model give the same frames as two separate whole decodes."""
    other = torch.randn_like(latents)
    expected_other = vae.decode(other)
    a, b = vae.decode_stream(), vae.decode_stream()
    out_a, out_b = [], []
    for part_a, part_b in zip(_split(latents, [3, 3, 3]), _split(other, [3, 3, 3])):
        out_b.append(vae.decode_chunk(b, part_b))
        out_a.append(vae.decode_chunk(a, part_a))
    assert torch.equal(torch.cat(out_a, dim=2), whole)
    assert torch.equal(torch.cat(out_b, dim=2), expected_other)
    assert a.steps == b.steps == 9 and a.tails[0] is not b.tails[0]


def test_stream_encode_equals_whole(vae):
    video = torch.rand(1, 3, 33, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    whole = vae.encode(video)
    assert whole.shape == (1, 48, 9, 2, 2)
    for sizes in ([1] + [4] * 8, [5, 8, 20], [17, 16]):
        state = vae.encode_stream()
        pieces = [vae.encode_chunk(state, part) for part in _split(video, sizes)]
        assert [p.shape[2] for p in pieces] == [1 + (sizes[0] - 1) // 4] + [s // 4 for s in sizes[1:]]
        assert torch.equal(torch.cat(pieces, dim=2), whole), sizes


def test_state_memory_fixed_after_second_latent(vae, latents):
    state = vae.decode_stream()
    assert state.first and state.nbytes() == 0
    vae.decode_chunk(state, latents[:, :, :1])
    held = state.nbytes()
    vae.decode_chunk(state, latents[:, :, 1:3])
    assert not state.first and held > 0
    assert state.nbytes() >= held  # upsampler histories appear on the second latent, then stay fixed
    grown = state.nbytes()
    vae.decode_chunk(state, latents[:, :, 3:4])
    assert state.nbytes() == grown


# ---- input errors -------------------------------------------------------------------------


def test_resolution_not_divisible(vae):
    with pytest.raises(ConfigError, match="not divisible by 16"):
        vae.encode(torch.zeros(1, 3, 1, 40, 32))


def test_whole_encode_needs_1_plus_4k_frames(vae):
    with pytest.raises(ConfigError, match=r"1 \+ 4k"):
        vae.encode(torch.zeros(1, 3, 8, 32, 32))


def test_wrong_channel_counts(vae):
    with pytest.raises(ConfigError, match="channels"):
        vae.encode(torch.zeros(1, 4, 1, 32, 32))
    with pytest.raises(ConfigError, match="channels"):
        vae.decode(torch.zeros(1, 16, 1, 2, 2))


def test_stream_misuse(vae, latents):
    state = vae.encode_stream()
    vae.encode_chunk(state, torch.zeros(1, 3, 1, 32, 32))
    with pytest.raises(ConfigError, match="multiple of 4"):
        vae.encode_chunk(state, torch.zeros(1, 3, 5, 32, 32))
    with pytest.raises(ConfigError, match="started with"):
        vae.encode_chunk(state, torch.zeros(1, 3, 4, 48, 32))
    with pytest.raises(ConfigError, match="decode_stream"):
        vae.decode_chunk(state, latents)
