"""One source of truth for video geometry: pixels <-> latents <-> tokens <-> chunks.

Units, as everywhere in LongLive: `*_frames` are latent frames; pixel frames, tokens and
chunks say so in their names.

A causal video codec with temporal stride s maps pixel frames to latent frames as
`1 + (pixel_frames - 1) / s`: the first latent holds one pixel frame, every later latent holds
s of them (Wan2.2 VAE: s = 4, spatial stride 16). The DiT then cuts each latent frame into
patches of (patch_h, patch_w), so tokens per latent frame = (H / 16 / 2) * (W / 16 / 2) for
Wan2.2 (880 at 1280x704). Nothing else in the code base writes such numbers down.
"""
from __future__ import annotations

import attrs

from longlive.errors import ConfigError


@attrs.frozen(kw_only=True)
class Geometry:
    """The shape of one generated video, from pixels to DiT tokens."""

    height: int  # pixels
    width: int  # pixels
    temporal_stride: int  # pixel frames per latent frame (after the first)
    spatial_stride: int  # pixels per latent pixel
    patch_h: int  # latent pixels per token, vertically
    patch_w: int  # latent pixels per token, horizontally
    frames_per_chunk: int  # latent frames denoised together

    def __attrs_post_init__(self) -> None:
        step_h = self.spatial_stride * self.patch_h
        step_w = self.spatial_stride * self.patch_w
        if self.height <= 0 or self.height % step_h:
            raise ConfigError(
                f"sampler.height={self.height} must be a positive multiple of {step_h} "
                f"(codec stride {self.spatial_stride} x patch {self.patch_h}); "
                f"try {max(step_h, round(self.height / step_h) * step_h)}"
            )
        if self.width <= 0 or self.width % step_w:
            raise ConfigError(
                f"sampler.width={self.width} must be a positive multiple of {step_w} "
                f"(codec stride {self.spatial_stride} x patch {self.patch_w}); "
                f"try {max(step_w, round(self.width / step_w) * step_w)}"
            )
        if self.frames_per_chunk <= 0:
            raise ConfigError(f"sampler.frames_per_chunk={self.frames_per_chunk} must be positive")

    @property
    def latent_height(self) -> int:
        return self.height // self.spatial_stride

    @property
    def latent_width(self) -> int:
        return self.width // self.spatial_stride

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_height // self.patch_h) * (self.latent_width // self.patch_w)

    @property
    def chunk_tokens(self) -> int:
        return self.tokens_per_frame * self.frames_per_chunk

    def tokens(self, frames: int) -> int:
        return self.tokens_per_frame * frames

    def chunks(self, frames: int) -> int:
        """Number of chunks in `frames` latent frames; they must divide evenly."""
        if frames <= 0 or frames % self.frames_per_chunk:
            raise ConfigError(
                f"sampler.num_frames={frames} must be a positive multiple of "
                f"sampler.frames_per_chunk={self.frames_per_chunk}; try "
                f"{max(1, round(frames / self.frames_per_chunk)) * self.frames_per_chunk}"
            )
        return frames // self.frames_per_chunk

    def pixel_frames(self, frames: int) -> int:
        """Pixel frames decoded from `frames` latent frames: 1 + stride * (frames - 1)."""
        return 1 + self.temporal_stride * (frames - 1) if frames > 0 else 0

    def latent_frames(self, pixel_frames: int) -> int:
        """Latent frames that encode `pixel_frames` frames; they must be 1 + stride * k."""
        if pixel_frames < 1 or (pixel_frames - 1) % self.temporal_stride:
            raise ConfigError(
                f"{pixel_frames} pixel frames cannot be encoded: a causal codec of temporal stride "
                f"{self.temporal_stride} needs 1 + {self.temporal_stride}*k frames"
            )
        return 1 + (pixel_frames - 1) // self.temporal_stride

    def latent_shape(self, frames: int, channels: int, batch: int = 1) -> tuple[int, ...]:
        """Shape of a latent video: [B, C, F, H, W]."""
        return (batch, channels, frames, self.latent_height, self.latent_width)
