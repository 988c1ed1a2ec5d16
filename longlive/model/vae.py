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
import types
from typing import Mapping

import attrs
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from longlive.errors import ConfigError
from longlive.model.vae_blocks import CausalConv3d, Decoder, Encoder, StreamState

log = logging.getLogger(__name__)

# Per-channel statistics of Wan2.2 VAE latents (Wan2_2_VAE in wan/modules/vae2_2.py; the same
# numbers are diffusers' `vae22_diffusers_config` latents_mean / latents_std).
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@attrs.frozen(kw_only=True)
class VAEConfig:
    """Every shape of a Wan2.2-architecture VAE; the model derives everything else from it."""

    name: str = "custom"  # the preset name, for error messages
    base_dim: int = 160  # encoder width before dim_mult
    decoder_base_dim: int = 256  # decoder width before dim_mult
    z_dim: int = 48  # latent channels
    dim_mult: tuple[int, ...] = attrs.field(default=(1, 2, 4, 4), converter=tuple)
    num_res_blocks: int = 2  # per encoder stage; the decoder has one more
    temporal_downsample: tuple[bool, ...] = attrs.field(default=(False, True, True), converter=tuple)
    patch_size: int = 2  # pixel patchify before the encoder
    in_channels: int = 3  # pixel channels
    latents_mean: tuple[float, ...] = attrs.field(default=WAN22_LATENTS_MEAN, converter=_floats)
    latents_std: tuple[float, ...] = attrs.field(default=WAN22_LATENTS_STD, converter=_floats)

    def __attrs_post_init__(self) -> None:
        where = f"VAE preset {self.name!r}"
        for field in ("base_dim", "decoder_base_dim", "z_dim", "num_res_blocks", "patch_size", "in_channels"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{where}: {field}={value!r} must be a positive integer")
        if len(self.dim_mult) < 2 or any(not isinstance(m, int) or m <= 0 for m in self.dim_mult):
            raise ConfigError(f"{where}: dim_mult={self.dim_mult!r} must be at least two positive integers")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ConfigError(f"{where}: temporal_downsample={self.temporal_downsample!r} needs one flag per "
                              f"downsampling stage ({len(self.dim_mult) - 1})")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ConfigError(f"{where}: latents_mean/latents_std have {len(self.latents_mean)}/"
                              f"{len(self.latents_std)} entries; need z_dim={self.z_dim}")
        if any(s <= 0 for s in self.latents_std):
            raise ConfigError(f"{where}: latents_std must be positive")
        self._check_shortcuts(where)

    def _check_shortcuts(self, where: str) -> None:
        """The parameter-free shortcuts regroup channels; their ratios must be whole numbers."""
        enc, dec = self.encoder_dims, self.decoder_dims
        for i in range(len(self.dim_mult) - 1):
            factor_t = 2 if self.temporal_downsample[i] else 1
            if (enc[i] * factor_t * 4) % enc[i + 1]:
                raise ConfigError(f"{where}: encoder stage {i}: {enc[i]} channels x {factor_t * 4} do not "
                                  f"split into {enc[i + 1]} groups; change base_dim or dim_mult")
            factor_t = 2 if self.temporal_upsample[i] else 1
            if (dec[i + 1] * factor_t * 4) % dec[i]:
                raise ConfigError(f"{where}: decoder stage {i}: {dec[i + 1]} channels x {factor_t * 4} are not "
                                  f"a multiple of {dec[i]}; change decoder_base_dim or dim_mult")

    @property
    def encoder_dims(self) -> tuple[int, ...]:
        return tuple(self.base_dim * m for m in (1, *self.dim_mult))

    @property
    def decoder_dims(self) -> tuple[int, ...]:
        return tuple(self.decoder_base_dim * m for m in (self.dim_mult[-1], *self.dim_mult[::-1]))

    @property
    def temporal_upsample(self) -> tuple[bool, ...]:
        return self.temporal_downsample[::-1]

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent pixel: patchify times one halving per stage."""
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_stride(self) -> int:
        """Pixel frames per latent frame (after the first)."""
        return 2 ** sum(self.temporal_downsample)

    @property
    def patch_channels(self) -> int:
        return self.in_channels * self.patch_size**2


VAE_PRESETS: Mapping[str, VAEConfig] = types.MappingProxyType({
    "wan2.2-vae": VAEConfig(name="wan2.2-vae"),
    "debug": VAEConfig(name="debug", base_dim=8, decoder_base_dim=16, z_dim=48,
                       latents_mean=(0.0,) * 48, latents_std=(1.0,) * 48),
})


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
