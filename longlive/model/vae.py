"""The Wan2.2 VAE (TI2V-5B codec): encode/decode whole videos or stream them chunk by chunk.

Geometry. Pixels [B, 3, T, H, W] in [-1, 1] are first patchified 2x2 into 12 channels
(`b c t (h q) (w r) -> b (c r q) t h w`), then the encoder halves H and W three times and T
twice: spatial stride 2 * 8 = 16, temporal stride 4. A causal codec maps T = 1 + 4k pixel frames
to 1 + k latent frames: the first latent holds one frame, every later latent holds four.
Latents are [B, z, F, H/16, W/16] with z = 48.

Normalisation. `encode` returns the posterior mean mu, normalised per channel:
(mu - latents_mean) / latents_std. `decode` undoes it (z * std + mean) before the decoder, and
clamps its output to [-1, 1]. Both run without autograd: the VAE is frozen in LongLive.

Streaming. The encoder runs one step per pixel-frame group (1 frame, then 4 at a time) and the
decoder one step per latent frame, exactly as Wan does; a `StreamState` (vae_blocks.py) carries
the causal history between steps, so a whole-video call and any split into chunks give the
same bits. The state lives in the caller's object, not on the module: several streams may
share one model. Usage:

    state = vae.decode_stream()
    for chunk in chunks:                        # [B, z, F_i, h, w]
        frames = vae.decode_chunk(state, chunk)  # 1 + 4 (F_0 - 1) frames, then 4 F_i

The module layout follows Wan's `Wan2.2_VAE.pth` (`encoder.downsamples.i.downsamples.j`,
`middle.k`, top-level `conv1`/`conv2`) so that its checkpoint loads with a few suffix renames
(vae_convert.py).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from longlive.errors import ConfigError
from longlive.model.vae_blocks import CausalConv3d, Decoder, Encoder, StreamState
from longlive.model.vae_presets import VAE_PRESETS, VAEConfig

__all__ = ["VAE_PRESETS", "VAEConfig", "WanVAE", "patchify", "unpatchify"]

log = logging.getLogger(__name__)

def patchify(video: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C*p*p, T, H/p, W/p], channels ordered (c, w-offset, h-offset) as Wan."""
    return rearrange(video, "b c t (h q) (w r) -> b (c r q) t h w", q=patch, r=patch)


def unpatchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of `patchify`."""
    return rearrange(x, "b (c r q) t h w -> b c t (h q) (w r)", q=patch, r=patch)


class WanVAE(nn.Module):
    """Wan2.2 VAE with caller-owned streaming state; latents normalised, pixels in [-1, 1]."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        z = config.z_dim
        self.encoder = Encoder(in_channels=config.patch_channels, dims=config.encoder_dims, out_channels=2 * z,
                               num_res_blocks=config.num_res_blocks, temporal_downsample=config.temporal_downsample)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)  # posterior (mu, logvar); only mu is used
        self.conv2 = CausalConv3d(z, z, 1)
        self.decoder = Decoder(in_channels=z, dims=config.decoder_dims, out_channels=config.patch_channels,
                               num_res_blocks=config.num_res_blocks, temporal_upsample=config.temporal_upsample)
        # Not in the checkpoint; cast with the module by .to(dtype) (bf16 rounds std by <= 2^-9).
        self.register_buffer("latents_mean", torch.tensor(config.latents_mean).view(1, z, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", torch.tensor(config.latents_std).view(1, z, 1, 1, 1), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    # ---- whole videos -------------------------------------------------------------------

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1 + 4k, H, W] pixels in [-1, 1] -> normalised latents [B, z, 1 + k, H/16, W/16]."""
        stride = self.config.temporal_stride
        frames = video.shape[2] if video.ndim == 5 else 1  # other ranks fail in encode_chunk's check
        if frames < 1 or (frames - 1) % stride:
            raise ConfigError(f"VAE encode: a video of {frames} frames cannot be encoded whole; the causal VAE needs "
                              f"1 + {stride}k frames (e.g. {1 + stride * max(0, (frames - 1) // stride)})")
        return self.encode_chunk(self.encode_stream(), video)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, z, F, h, w] -> pixels [B, 3, 1 + 4(F - 1), 16h, 16w] in [-1, 1]."""
        return self.decode_chunk(self.decode_stream(), latents)

    # ---- streams --------------------------------------------------------------------------

    def encode_stream(self) -> StreamState:
        """A fresh encoder stream: feed it with encode_chunk (1 + 4k frames first, then 4k)."""
        return StreamState("encode", self.encoder.num_cache_slots)

    def decode_stream(self) -> StreamState:
        """A fresh decoder stream: feed it with decode_chunk (any number of latent frames per call)."""
        return StreamState("decode", self.decoder.num_cache_slots)

    @torch.no_grad()
    def encode_chunk(self, state: StreamState, video: torch.Tensor) -> torch.Tensor:
        """Encode the next pixel frames of a stream: [B, 3, T, H, W] -> [B, z, T/4 (+1 first), H/16, W/16]."""
        self._check_stream(state, "encode", video, self.config.in_channels, self.config.spatial_stride, "pixel")
        stride, frames = self.config.temporal_stride, video.shape[2]
        lead = 1 if state.first else 0  # the first pixel frame is a step on its own
        if frames < 1 or (frames - lead) % stride:
            need = f"1 + {stride}k" if lead else f"a positive multiple of {stride}"
            raise ConfigError(f"VAE encode_chunk: got {frames} frames; this call of the stream needs {need}")
        x = patchify(video.to(self.dtype), self.config.patch_size)  # [B, 12, T, H/2, W/2]
        starts = [0] * lead + list(range(lead, frames, stride))
        b, _, _, h, w = x.shape
        out = x.new_empty(b, self.config.z_dim, len(starts), h * 2 // self.config.spatial_stride,
                          w * 2 // self.config.spatial_stride)  # [B, z, F, H/16, W/16]
        for i, start in enumerate(starts):
            end = start + (1 if start == 0 and lead else stride)
            out[:, :, i:i + 1] = self._encode_step(state, x[:, :, start:end])
        return out

    @torch.no_grad()
    def decode_chunk(self, state: StreamState, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next latent frames of a stream: 1 frame for the video's first latent, 4 per later one."""
        self._check_stream(state, "decode", latents, self.config.z_dim, 1, "latent")
        stride, p = self.config.temporal_stride, self.config.patch_size
        b, _, count, h, w = latents.shape
        if count < 1:
            raise ConfigError("VAE decode_chunk: got 0 latent frames; pass at least one")
        frames = count * stride - (stride - 1 if state.first else 0)
        out = latents.new_empty(b, self.config.in_channels, frames, h * self.config.spatial_stride,
                                w * self.config.spatial_stride, dtype=self.dtype)  # [B, 3, T, H, W]
        t = 0
        for i in range(count):
            y = self._decode_step(state, latents[:, :, i:i + 1].to(self.dtype))  # [B, 12, 1 or 4, H/2, W/2]
            out[:, :, t:t + y.shape[2]] = unpatchify(y, p)
            t += y.shape[2]
        assert t == frames, (t, frames)
        return out.clamp_(-1.0, 1.0)

    # ---- one step -------------------------------------------------------------------------

    def _encode_step(self, state: StreamState, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x, state)  # [B, 2z, 1, h, w]
        z = self.config.z_dim
        mu = F.conv3d(h, self.conv1.weight[:z], self.conv1.bias[:z])  # the mean half of the posterior
        state.first, state.steps = False, state.steps + 1
        return (mu - self.latents_mean) / self.latents_std

    def _decode_step(self, state: StreamState, latent: torch.Tensor) -> torch.Tensor:
        z = torch.addcmul(self.latents_mean, latent, self.latents_std)  # undo the normalisation
        y = self.decoder(self.conv2(z), state)
        state.first, state.steps = False, state.steps + 1
        return y

    def _check_stream(self, state: StreamState, kind: str, x: torch.Tensor, channels: int, multiple: int,
                      what: str) -> None:
        if not isinstance(state, StreamState) or state.kind != kind:
            got = state.kind if isinstance(state, StreamState) else type(state).__name__
            raise ConfigError(f"VAE {kind}_chunk: the state is a {got!r} stream; create it with vae.{kind}_stream()")
        if x.ndim != 5:
            raise ConfigError(f"VAE {kind}: expected {what}s [B, C, T, H, W], got shape {tuple(x.shape)}")
        b, c, _, h, w = x.shape
        if c != channels:
            raise ConfigError(f"VAE {kind}: {what}s have {c} channels, this VAE ({self.config.name!r}) takes "
                              f"{channels}; pass [B, {channels}, T, H, W]")
        if h % multiple or w % multiple:
            fit_h, fit_w = max(multiple, h // multiple * multiple), max(multiple, w // multiple * multiple)
            raise ConfigError(f"VAE {kind}: resolution {h}x{w} (HxW) not divisible by {multiple}; resize or crop "
                              f"to e.g. {fit_h}x{fit_w}")
        if state.shape is None:
            state.shape = (b, h, w)
        elif state.shape != (b, h, w):
            raise ConfigError(f"VAE {kind}_chunk: this stream started with (B, H, W)={state.shape}, got {(b, h, w)}; "
                              "start a new stream for another video size")
