"""Wan2.2-architecture VAE shapes (VAEConfig) and the named presets: plain data, no torch.

The core plugin reads a preset's strides and latent channels when it registers the codec
components, before anything heavy is imported; longlive/model/vae.py builds the network.
"""
from __future__ import annotations

import types
from typing import Mapping

import attrs

from longlive.errors import ConfigError

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
