"""Halo encoding: one SP rank VAE-encodes only its own latent frames, warmed up by a left halo.

A causal codec maps pixel frames to latents as: latent 0 <- frame 0 alone, latent j >= 1 <-
frames [s (j - 1) + 1, s j + 1) (stride s = 4 for the Wan2.2 VAE), each latent also seeing
earlier frames through the causal convolutions' history. Rank r of Balanced SP needs latents
[start, end) only. It encodes the pixel window that begins `halo` latents earlier:

    halo_start = max(0, start - halo)
    pixels [s (halo_start - 1), s (end - 1) + 1)     (from pixel 0 if halo_start = 0)
    -> 1 "pseudo" latent (the window's first frame, encoded alone as a stream start), then the
       latents halo_start .. end - 1; drop the pseudo latent and the halo (`drop` leading ones)

A rank encodes end - start + halo latents instead of all F (O(F/sp + halo) instead of O(F)).
The kept latents equal the whole-video encode exactly when the codec's temporal receptive field
fits in the halo (the toy codec: any halo, even 0); the Wan2.2 VAE's causal history is longer,
so the kept latents differ by an error that falls with the halo (docs/parallel.md measures it;
LongLive 2.0 uses a halo of 28 latents).
"""
from __future__ import annotations

from typing import Any

import attrs
import torch

from longlive.errors import ConfigError


@attrs.frozen
class HaloWindow:
    """The pixel frames [pixel_start, pixel_end) a rank encodes and how many leading latents it drops."""

    pixel_start: int
    pixel_end: int
    drop: int  # leading latents of the window's encode that are not the rank's (pseudo + halo)
    keep: int  # the rank's latents, end - start

    @property
    def encoded_latents(self) -> int:
        return self.drop + self.keep


def halo_window(start: int, end: int, halo: int, stride: int) -> HaloWindow:
    """The window of latents [start, end) with a left halo of `halo` latents (module docstring)."""
    if not 0 <= start < end or halo < 0 or stride < 1:
        raise ConfigError(f"halo encoding: latents [{start}, {end}) with halo {halo} and stride {stride} "
                          "are not a window; need 0 <= start < end, halo >= 0")
    halo_start = max(0, start - halo)
    pixel_end = stride * (end - 1) + 1
    if halo_start == 0:
        return HaloWindow(0, pixel_end, drop=start, keep=end - start)
    return HaloWindow(stride * (halo_start - 1), pixel_end, drop=1 + start - halo_start, keep=end - start)


def encode_with_halo(codec: Any, video: torch.Tensor, start: int, end: int, halo: int, stride: int) -> torch.Tensor:
    """Latents [start, end) of `video` [B, 3, T, H, W] (T = 1 + stride (F - 1)), encoding only the
    halo window: `codec.encode` of video[:, :, pixel_start:pixel_end], leading `drop` latents dropped."""
    window = halo_window(start, end, halo, stride)
    if window.pixel_end > video.shape[2]:
        raise ConfigError(f"halo encoding: latents up to {end} need {window.pixel_end} pixel frames, the video has "
                          f"{video.shape[2]}")
    latents = codec.encode(video[:, :, window.pixel_start:window.pixel_end])
    return latents[:, :, window.drop:window.drop + window.keep]
