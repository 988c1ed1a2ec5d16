"""Layers of the Wan2.2 VAE and the explicit streaming state they read and write.

Causality. Every temporal convolution is causal: output frame t sees input frames <= t. A
kernel of 3 frames needs 2 frames of history; before the video starts that history is zeros
(Wan's causal zero padding). The encoder and decoder run one *step* at a time (one pixel frame,
then 4 pixel frames per step for the encoder; one latent frame per step for the decoder), and
each temporal layer keeps what it needs from earlier steps in a `StreamState`:

- `CausalConv3d` (temporal kernel 3): the last 2 frames of its input, zeros at the start.
- `Downsample` (temporal): the last frame after its spatial stride-2 conv. On the first step its
  frame passes through un-strided; later steps run a stride-2 kernel-3 time conv over
  [kept frame, new frames], so 4 frames -> 2 -> 1 through the two temporal stages.
- `Upsample` (temporal): on the first step it skips its time conv (Wan's "Rep" marker), so the
  first latent yields one frame; from the second step on, its time conv (C -> 2C channels, fed
  by zero history at its first use) turns every frame into 2, interleaved in time.
- `UpBlock`'s parameter-free DupUp shortcut drops its leading factor_t - 1 frames on the first
  step, to match.

Because layers only ever see one step and the state carries exactly the frames a whole-video
pass would have seen, any split of a video into chunks gives bit-identical results.

Layouts are [B, C, T, H, W] throughout. Spatial 2-D convs of the resamplers keep Wan's Conv2d
weights ([C_out, C_in, 3, 3]) but run as 3-D convs with a (1, 3, 3) kernel view, which avoids
folding time into the batch (two permute copies per call).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

log = logging.getLogger(__name__)

class StreamState:
    """What one video stream carries between steps through an encoder or a decoder.

    `tails[slot]` is the history of the temporal layer numbered `slot` (see module docstring);
    None until that layer first runs. `first` is True until the first step has run. `kind` is
    "encode" or "decode"; `shape` is (B, H, W) of the first chunk, which later chunks must match.
    Tail buffers are allocated once and then overwritten in place, so a step allocates no
    cache memory after the first two. Not safe to use from two threads at once.
    """

    __slots__ = ("kind", "tails", "first", "shape", "steps")

    def __init__(self, kind: str, num_slots: int) -> None:
        self.kind = kind
        self.tails: list[torch.Tensor | None] = [None] * num_slots
        self.first = True
        self.shape: tuple[int, int, int] | None = None
        self.steps = 0  # encoder/decoder steps run so far

    def with_history(self, slot: int, x: torch.Tensor, frames: int) -> torch.Tensor:
        """Return [history, x] along time and keep its last `frames` frames as the new history."""
        tail = self.tails[slot]
        if tail is None:  # before the video starts the history is zeros
            b, c, _, h, w = x.shape
            tail = x.new_zeros(b, c, frames, h, w)  # [B, C, frames, H, W]
            self.tails[slot] = tail
        joined = torch.cat([tail, x], dim=2)  # [B, C, frames + T, H, W]
        tail.copy_(joined[:, :, -frames:])
        return joined

    def nbytes(self) -> int:
        """Bytes held by the history buffers."""
        return sum(t.numel() * t.element_size() for t in self.tails if t is not None)


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


class CausalConv3d(nn.Conv3d):
    """3-D conv, zero-padded in space and causally in time (all temporal padding in the past).

    `padding` is Wan's (t, h, w) padding; the temporal part becomes 2*pt frames of history.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0) -> None:
        pt, ph, pw = _triple(padding)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=(0, ph, pw))
        self.history = 2 * pt  # frames of past input the kernel needs
        self.cache_slot = -1  # numbered by number_cache_slots() when history > 0

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        if self.history:
            assert state is not None and self.cache_slot >= 0, "temporal conv used without a stream"
            x = state.with_history(self.cache_slot, x, self.history)
        return super().forward(x)


class RMSNorm(nn.Module):
    """x / ||x||_channels * sqrt(C) * gamma, over dim 1 (Wan's RMS_norm; bias-free).

    The norm is accumulated in fp32 for bf16 inputs; the output keeps the input dtype.
    `gamma` is [C, 1, 1, 1] (video) or [C, 1, 1] (image), as in Wan's checkpoints.
    """

    def __init__(self, dim: int, *, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32)  # [B, 1, ...]
        gain = (self.gamma * self.scale).view(-1, *([1] * (x.ndim - 2)))  # [C, 1, ...]
        return x / norm.clamp_min(1e-12).to(x.dtype) * gain.to(x.dtype)


class ResidualBlock(nn.Module):
    """norm -> SiLU -> conv3 -> norm -> SiLU -> conv3, plus a 1x1x1 conv shortcut when C changes."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = RMSNorm(out_dim)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        y = self.conv1(F.silu(self.norm1(x), inplace=True), state)
        y = self.conv2(F.silu(self.norm2(y), inplace=True), state)
        return y.add_(skip)


class AttentionBlock(nn.Module):
    """Single-head self-attention inside each frame over its H*W positions (no mixing in time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)  # used as a linear over channels
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, _, h, _ = x.shape
        tokens = rearrange(self.norm(x), "b c t h w -> (b t) (h w) c")
        qkv = F.linear(tokens, self.to_qkv.weight.flatten(1), self.to_qkv.bias)  # [(B T), H*W, 3C]
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # each [(B T), 1, H*W, C]
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # [(B T), H*W, C]
        out = F.linear(out, self.proj.weight.flatten(1), self.proj.bias)
        return x + rearrange(out, "(b t) (h w) c -> b c t h w", b=b, h=h)


def _conv2d_as_3d(conv: nn.Conv2d, x: torch.Tensor, *, stride: int, padding: int) -> torch.Tensor:
    """Apply a Conv2d to every frame of [B, C, T, H, W] as a (1, k, k) 3-D conv (no copies)."""
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, stride, stride), padding=(0, padding, padding))


class Downsample(nn.Module):
    """Halve H and W (zero pad right/bottom, 3x3 stride-2 conv); optionally halve T causally."""

    def __init__(self, dim: int, *, temporal: bool) -> None:
        super().__init__()
        self.spatial_conv = nn.Conv2d(dim, dim, 3, stride=2)
        self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None
        self.cache_slot = -1  # numbered by number_cache_slots() when temporal

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        x = _conv2d_as_3d(self.spatial_conv, F.pad(x, (0, 1, 0, 1)), stride=2, padding=0)  # [B, C, T, H/2, W/2]
        if self.time_conv is None:
            return x
        if state.first:  # the first frame passes un-strided; keep it as history
            state.tails[self.cache_slot] = x[:, :, -1:].clone()
            return x
        tail = state.tails[self.cache_slot]
        joined = torch.cat([tail, x], dim=2)  # [B, C, 1 + T, H/2, W/2]
        tail.copy_(x[:, :, -1:])
        return self.time_conv(joined)  # [B, C, T/2, H/2, W/2]


class Upsample(nn.Module):
    """Optionally double T causally (C -> 2C time conv, interleaved), then double H and W."""

    def __init__(self, dim: int, *, temporal: bool) -> None:
        super().__init__()
        self.spatial_conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0)) if temporal else None

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        if self.time_conv is not None and not state.first:  # the first frame is not doubled
            x = self.time_conv(x, state)  # [B, 2C, T, H, W]
            x = rearrange(x, "b (two c) t h w -> b c (t two) h w", two=2)
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest-exact")  # [B, C, T', 2H, 2W]
        return _conv2d_as_3d(self.spatial_conv, x, stride=1, padding=1)


def avg_down(x: torch.Tensor, out_channels: int, factor_t: int, factor_s: int) -> torch.Tensor:
    """Wan's AvgDown3D: fold (t, h, w) blocks into channels, then average channel groups.

    Time is zero-padded at the front to a multiple of factor_t (the 1-frame first step).
    """
    pad_t = (-x.shape[2]) % factor_t
    if pad_t:
        x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
    x = rearrange(x, "b c (t ft) (h fh) (w fw) -> b (c ft fh fw) t h w", ft=factor_t, fh=factor_s, fw=factor_s)
    return x.unflatten(1, (out_channels, -1)).mean(dim=2)  # [B, C_out, T/ft, H/fs, W/fs]


def dup_up(x: torch.Tensor, out_channels: int, factor_t: int, factor_s: int, *, drop_first: bool) -> torch.Tensor:
    """Wan's DupUp3D: repeat channels, then unfold channel groups into (t, h, w) blocks.

    On the first step the leading factor_t - 1 frames are dropped (1 latent -> 1 frame).
    """
    repeats = out_channels * factor_t * factor_s * factor_s // x.shape[1]
    x = x.repeat_interleave(repeats, dim=1)  # [B, C_out * ft * fs * fs, T, H, W]
    x = rearrange(x, "b (c ft fh fw) t h w -> b c (t ft) (h fh) (w fw)", ft=factor_t, fh=factor_s, fw=factor_s)
    return x[:, :, factor_t - 1:] if drop_first else x


class DownBlock(nn.Module):
    """Residual blocks then a Downsample, plus the parameter-free avg_down shortcut (Wan2.2)."""

    def __init__(self, in_dim: int, out_dim: int, *, num_res_blocks: int, temporal: bool, spatial: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_res_blocks)]
        if spatial:
            layers.append(Downsample(out_dim, temporal=temporal))
        self.downsamples = nn.ModuleList(layers)  # Wan's name; the resampler is the last entry
        self.out_dim = out_dim
        self.factor_t = 2 if temporal else 1
        self.factor_s = 2 if spatial else 1
        self.identity_shortcut = in_dim == out_dim and not spatial

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        skip = x if self.identity_shortcut else avg_down(x, self.out_dim, self.factor_t, self.factor_s)
        for layer in self.downsamples:
            x = layer(x, state)
        return x + skip


class UpBlock(nn.Module):
    """num_res_blocks + 1 residual blocks then an Upsample, plus the dup_up shortcut (Wan2.2)."""

    def __init__(self, in_dim: int, out_dim: int, *, num_res_blocks: int, temporal: bool, spatial: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim)
                                   for i in range(num_res_blocks + 1)]
        if spatial:
            layers.append(Upsample(out_dim, temporal=temporal))
        self.upsamples = nn.ModuleList(layers)  # Wan's name; the resampler is the last entry
        self.out_dim = out_dim
        self.factor_t = 2 if temporal else 1
        self.spatial = spatial

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        y = x
        for layer in self.upsamples:
            y = layer(y, state)
        if not self.spatial:
            return y
        return y + dup_up(x, self.out_dim, self.factor_t, 2, drop_first=state.first)


def number_cache_slots(root: nn.Module) -> int:
    """Give every temporal layer under `root` its StreamState slot; return the slot count."""
    slots = 0
    for module in root.modules():
        uses_slot = (isinstance(module, CausalConv3d) and module.history > 0) or (
            isinstance(module, Downsample) and module.time_conv is not None)
        if uses_slot:
            module.cache_slot = slots
            slots += 1
    return slots


class Encoder(nn.Module):
    """Patchified pixels [B, 12, T, H, W] -> posterior parameters [B, 2z, T', H/8, W/8], one step at a time."""

    def __init__(self, *, in_channels: int, dims: tuple[int, ...], out_channels: int, num_res_blocks: int,
                 temporal_downsample: tuple[bool, ...]) -> None:
        super().__init__()
        self.conv1 = CausalConv3d(in_channels, dims[0], 3, padding=1)
        last = len(dims) - 2
        self.downsamples = nn.ModuleList(
            DownBlock(dims[i], dims[i + 1], num_res_blocks=num_res_blocks,
                      temporal=i < last and temporal_downsample[i], spatial=i < last)
            for i in range(len(dims) - 1)
        )
        self.middle = nn.ModuleList([ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]),
                                     ResidualBlock(dims[-1], dims[-1])])
        self.head_norm = RMSNorm(dims[-1])
        self.head_conv = CausalConv3d(dims[-1], out_channels, 3, padding=1)
        self.num_cache_slots = number_cache_slots(self)

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        x = self.conv1(x, state)
        for block in self.downsamples:
            x = block(x, state)
        res_a, attn, res_b = self.middle
        x = res_b(attn(res_a(x, state)), state)
        return self.head_conv(F.silu(self.head_norm(x), inplace=True), state)


class Decoder(nn.Module):
    """Latents [B, z, 1, h, w] -> patchified pixels [B, 12, 1 or 4, 8h, 8w], one latent frame per step."""

    def __init__(self, *, in_channels: int, dims: tuple[int, ...], out_channels: int, num_res_blocks: int,
                 temporal_upsample: tuple[bool, ...]) -> None:
        super().__init__()
        self.conv1 = CausalConv3d(in_channels, dims[0], 3, padding=1)
        self.middle = nn.ModuleList([ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                     ResidualBlock(dims[0], dims[0])])
        last = len(dims) - 2
        self.upsamples = nn.ModuleList(
            UpBlock(dims[i], dims[i + 1], num_res_blocks=num_res_blocks,
                    temporal=i < last and temporal_upsample[i], spatial=i < last)
            for i in range(len(dims) - 1)
        )
        self.head_norm = RMSNorm(dims[-1])
        self.head_conv = CausalConv3d(dims[-1], out_channels, 3, padding=1)
        self.num_cache_slots = number_cache_slots(self)

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        x = self.conv1(x, state)
        res_a, attn, res_b = self.middle
        x = res_b(attn(res_a(x, state)), state)
        for block in self.upsamples:
            x = block(x, state)
        return self.head_conv(F.silu(self.head_norm(x), inplace=True), state)
