"""PatchCodec: a deterministic, lossless stand-in for the Wan2.2 VAE in the toy world.

Layout. Encoding folds every s x s pixel patch and every group of tau consecutive frames into the
channel axis: video [B, 3, T, H, W] -> latents [B, 3*tau*s*s, F, H/s, W/s], channel order
(tau, rgb, s_h, s_w). Presets: s=4, tau=1 or s=2, tau=4, both 48 channels like the Wan2.2 VAE.

Time follows the Wan2.2 causal layout. With tau=1 every frame is one latent (T = F). With tau>1
the first latent holds only frame 0 (stored tau times, so every latent has the same statistics)
and each later latent holds tau new frames: T = 1 + tau*(F-1). Decoding the first latent takes
the mean of its tau copies, which is exact for encoded data (tau a power of two) and averages
generated copies.

Normalisation: the per-channel affine map is the identity. Pixels in [-1, 1] are already roughly
unit scale (measured over 200 sampled toy clips: mean -0.31, std 0.57, alike in R, G and B), and
an identity map keeps the codec exactly invertible (encode then decode returns the input bit for
bit). Decoding clamps to [-1, 1], as the Wan VAE does.

Streaming carries no numerical state (latents do not overlap); the stream state only remembers
whether the first latent (the one-frame latent) has been seen, so chunked == whole, bit for bit.
The module has no parameters. Like the Wan VAE it computes in its own dtype (`codec.dtype`,
float32 unless moved with `.to(dtype=...)`, recorded on an empty buffer); outputs stay on the
input's device.
"""
from __future__ import annotations

import logging

import attrs
import torch
from einops import rearrange
from torch import nn

from longlive.errors import ConfigError

log = logging.getLogger(__name__)


@attrs.define
class CodecStream:
    """Per-video streaming state: how many latents this stream has encoded or decoded."""

    kind: str  # "encode" or "decode"
    latents_done: int = 0
    shape: tuple[int, int, int] | None = None  # (B, H, W) of the first chunk; later chunks match it


def _mean_of_copies(x: torch.Tensor) -> torch.Tensor:
    """Mean over dim 2 of [B, C, n, H, W], by pairwise halving while n is even.

    (a + a) / 2 == a exactly, so n identical copies (n a power of two) give the copy back bit
    for bit, whatever order a reduction kernel would sum them in.
    """
    while x.shape[2] > 1 and x.shape[2] % 2 == 0:
        x = (x[:, :, 0::2] + x[:, :, 1::2]) / 2
    return x.mean(dim=2, keepdim=True)


class PatchCodec(nn.Module):
    """Pixel-unshuffle + temporal stacking; same API as the Wan2.2 VAE component."""

    def __init__(self, spatial_factor: int = 4, temporal_factor: int = 1) -> None:
        super().__init__()
        if spatial_factor < 1 or temporal_factor < 1:
            raise ConfigError(f"toyworld codec: spatial_factor={spatial_factor} and temporal_factor="
                              f"{temporal_factor} must be >= 1 (presets: 4/1 or 2/4)")
        self.spatial_stride = spatial_factor
        self.temporal_stride = temporal_factor
        self.latent_channels = 3 * spatial_factor * spatial_factor * temporal_factor
        # An empty buffer, so .to(device, dtype) records where outputs should go (no weights).
        self.register_buffer("anchor", torch.empty(0), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def extra_repr(self) -> str:
        return f"spatial_stride={self.spatial_stride}, temporal_stride={self.temporal_stride}"

    # ---- whole videos ---------------------------------------------------------------------

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1], T = 1 + tau*k -> latents [B, C, F, H/s, W/s]."""
        return self.encode_chunk(self.encode_stream(), video)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, F, h, w] -> video [B, 3, T, h*s, w*s] in [-1, 1]."""
        return self.decode_chunk(self.decode_stream(), latents)

    # ---- streaming --------------------------------------------------------------------------

    def encode_stream(self) -> CodecStream:
        return CodecStream("encode")

    def decode_stream(self) -> CodecStream:
        return CodecStream("decode")

    def encode_chunk(self, state: CodecStream, frames: torch.Tensor) -> torch.Tensor:
        """Encode the next frames of a stream: the first call 1 + tau*k frames, later tau*k."""
        tau, s = self.temporal_stride, self.spatial_stride
        self._check_stream(state, "encode", frames, 3, s)
        self._check_frames(frames.shape[2], first=state.latents_done == 0)
        frames = frames.to(self.dtype)
        if state.latents_done == 0 and tau > 1:
            first = frames[:, :, :1].expand(-1, -1, tau, -1, -1)  # [B, 3, tau, H, W]
            frames = torch.cat([first, frames[:, :, 1:]], dim=2)  # [B, 3, tau*F, H, W]
        latents = rearrange(frames, "b c (f t) (h p) (w q) -> b (t c p q) f h w", t=tau, p=s, q=s)
        state.latents_done += latents.shape[2]
        return latents.contiguous()  # [B, C, F, H/s, W/s]

    def decode_chunk(self, state: CodecStream, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next latents of a stream: the stream's first latent gives 1 frame, others tau."""
        tau, s = self.temporal_stride, self.spatial_stride
        self._check_stream(state, "decode", latents, self.latent_channels, 1)
        if latents.shape[2] < 1:
            raise ConfigError("toyworld codec: decode_chunk got 0 latent frames; pass at least one")
        frames = rearrange(latents.to(self.dtype), "b (t c p q) f h w -> b c (f t) (h p) (w q)", t=tau, c=3, p=s, q=s)
        if state.latents_done == 0 and tau > 1:
            first = _mean_of_copies(frames[:, :, :tau])  # [B, 3, 1, H, W]
            frames = torch.cat([first, frames[:, :, tau:]], dim=2)  # [B, 3, 1 + tau*(F-1), H, W]
        state.latents_done += latents.shape[2]
        return frames.clamp(-1.0, 1.0)

    # ---- geometry ---------------------------------------------------------------------------

    def pixel_frames(self, frames: int) -> int:
        """Pixel frames decoded from `frames` latent frames."""
        return 1 + self.temporal_stride * (frames - 1) if frames > 0 else 0

    def _check_stream(self, state: CodecStream, kind: str, x: torch.Tensor, channels: int, multiple: int) -> None:
        if not isinstance(state, CodecStream) or state.kind != kind:
            got = state.kind if isinstance(state, CodecStream) else type(state).__name__
            raise ConfigError(f"toyworld codec {kind}_chunk: the state is a {got!r} stream; "
                              f"create it with codec.{kind}_stream()")
        if x.ndim != 5 or x.shape[1] != channels:
            raise ConfigError(f"toyworld codec {kind}: expected [B, {channels}, T, H, W]; got {tuple(x.shape)}")
        b, _, _, h, w = x.shape
        if h % multiple or w % multiple:
            raise ConfigError(f"toyworld codec: frame size {h}x{w} is not divisible by spatial_factor={multiple}; "
                              f"crop or resize to e.g. {max(multiple, h // multiple * multiple)}x"
                              f"{max(multiple, w // multiple * multiple)}")
        if state.shape is None:
            state.shape = (b, h, w)
        elif state.shape != (b, h, w):
            raise ConfigError(f"toyworld codec {kind}_chunk: chunk has (B, H, W) = {(b, h, w)}, the stream "
                              f"started with {state.shape}; start a new stream for a new video")

    def _check_frames(self, t: int, *, first: bool) -> None:
        tau = self.temporal_stride
        if first and (t < 1 or (t - 1) % tau):
            raise ConfigError(f"toyworld codec: {t} frames cannot start a stream with temporal_factor={tau}; "
                              f"the first chunk needs 1 + {tau}*k frames")
        if not first and (t < 1 or t % tau):
            raise ConfigError(f"toyworld codec: {t} frames cannot continue a stream with temporal_factor="
                              f"{tau}; later chunks need a positive multiple of {tau} frames")
