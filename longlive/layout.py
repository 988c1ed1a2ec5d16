"""The sequence layout: how one chunk's tokens are split over the processes of an SP group.

A layout is what the DiT's cached forward (`WanDiT.forward_chunk`) asks, at fixed points, to
place its tensors; it comes with the KV cache (`CacheSpec.layout`, whose head count it sets), so
every cached forward (denoising, the clean pass, re-cache) runs in the layout its cache was
built for. The role is `longlive_make_sequence_layout`; the core's default is
`SingleDeviceLayout` (every call below is the identity), the sp_balanced plugin supplies
Ulysses sequence parallelism.

The points, in the order a forward meets them (L tokens of a chunk, H heads, sp ranks):

    scatter(tokens), scatter(rope), local_groups(t)   this rank's L/sp tokens, their RoPE rows and
                                                      timesteps (the adaLN modulation follows t)
    exchange_qkv(q, k, v)                             each [B, L/sp, H, D] -> [B, L, H/sp, D]
    (attention and the KV cache, over H/sp heads of the whole window)
    heads_to_seq(y)                                   [B, L, H/sp, D] -> [B, L/sp, H, D]
    (cross-attention and the FFN: token-local)
    gather(head output)                               [B, L/sp, C] -> [B, L, C]

`reduce_max` lets a storage compute a statistic over all heads (kv_fp4's per-tensor amax), so
a head-split cache quantizes exactly like a whole one; `agree` makes a host value (a live
prompt) the same on every rank of the group.

Inputs must be identical on every rank of an SP group (noise is drawn from (seed, chunk), text
is encoded from the same prompt): each rank takes its slice locally; nothing is sent to scatter.

No torch import here: the RunContext holds a layout from the start, and `validate` runs without
torch. `local_groups` works on tensors through their own methods.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from longlive.errors import ConfigError

if TYPE_CHECKING:
    import torch


@runtime_checkable
class SequenceLayout(Protocol):
    """How a chunk's sequence is laid out over an SP group (module docstring)."""

    name: str
    sp: int  # ranks that share one sequence
    sp_rank: int  # this rank's place among them

    def local_heads(self, num_heads: int) -> int:
        """Heads this rank's attention and KV cache hold."""

    def check(self, *, num_heads: int, chunk_tokens: int, where: str = "parallel.sp") -> None:
        """ConfigError unless the layout can split `num_heads` heads and chunks of `chunk_tokens`."""

    def scatter(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's contiguous 1/sp of `x` along `dim` (tokens; a local slice, nothing is sent)."""

    def local_groups(self, t: torch.Tensor, tokens: int) -> torch.Tensor:
        """Timesteps [B, N] of groups of `tokens`/N consecutive tokens -> those of this rank's tokens."""

    def exchange_qkv(self, q: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention's q, k, v [B, L/sp, H, D] -> each [B, L, H/sp, D] (`seq_to_heads` of all
        three; a layout may send K and V in a lower precision, which it then documents)."""

    def seq_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., B, L/sp, H, D] -> [..., B, L, H/sp, D]: every token, this rank's heads."""

    def heads_to_seq(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, H/sp, D] -> [B, L/sp, H, D]: this rank's tokens, every head."""

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The whole sequence along `dim` from every rank's slice (the inverse of scatter)."""

    def reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise max of `x` over the SP group (identical result on every rank)."""

    def agree(self, value: Any) -> Any:
        """SP rank 0's `value` (a picklable host object) on every rank."""

    def take_traffic(self) -> dict:
        """Bytes and collectives this rank sent since the last call (then reset): see Traffic."""

    def describe(self) -> dict:
        """What the run record keeps about the layout."""


@attrs.frozen
class TeacherSplit:
    """The latent frames of the clean and of the noisy copy of a video one rank holds in teacher forcing.

    The rank's sequence is [clean frames [clean_start, +clean_frames) ; noisy frames
    [noisy_start, +noisy_frames)]; the ranks' sequences, concatenated by rank, form the order the
    teacher-forcing mask of `mask_slices` slices describes (longlive/model/attention.py). Every
    rank holds the same number of frames (the all-to-all needs equal pieces).
    """

    clean_start: int
    clean_frames: int
    noisy_start: int
    noisy_frames: int
    mask_slices: int = 1

    @property
    def loss_frames(self) -> int:
        """Frames whose prediction (and loss) this rank computes: its noisy frames."""
        return self.noisy_frames


@runtime_checkable
class TeacherForcingLayout(SequenceLayout, Protocol):
    """A sequence layout that can also split teacher-forcing training's [clean ; noisy] sequence."""

    def teacher_split(self, frames: int, frames_per_block: int) -> TeacherSplit:
        """This rank's part of a video of `frames` latent frames (ConfigError if it does not split)."""

    def reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of `x` over the SP group (a new tensor, no gradient; identical on every rank)."""

    def encode_video(self, codec: Any, video: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, F, h, w] of pixels [B, 3, T, H, W] for training: at least the frames this
        rank's `teacher_split` reads are the codec's (a layout may leave the others zero)."""


@attrs.define
class Traffic:
    """Bytes this rank sent to other ranks, computed from the shapes of what the collectives move.

    An all-to-all of a local tensor of n bytes sends n * (sp - 1) / sp (1/sp of it stays); an
    all-gather of a local piece of n bytes sends it to sp - 1 ranks, n * (sp - 1). Summed over
    the group, multiply by sp.
    """

    bytes_sent: int = 0
    all_to_all: int = 0
    all_gather: int = 0
    all_reduce: int = 0

    def take(self) -> dict:
        out = attrs.asdict(self)
        self.bytes_sent = self.all_to_all = self.all_gather = self.all_reduce = 0
        return out


def local_groups(t: torch.Tensor, tokens: int, parts: int, index: int) -> torch.Tensor:
    """Timesteps t [B, N] (N = 1 or N dividing `tokens`: one per group of tokens/N consecutive
    tokens) of the tokens of part `index` of `parts` equal contiguous parts -> [B, n]."""
    groups = t.shape[1]
    if groups == 1:
        return t
    per_part = tokens // parts
    if groups % parts == 0:  # the groups align with the parts (whole frames per rank)
        return t.narrow(1, index * (groups // parts), groups // parts)
    return t.repeat_interleave(tokens // groups, dim=1).narrow(1, index * per_part, per_part)  # one per token


def check_split(sp: int, *, num_heads: int, chunk_tokens: int, frames_per_chunk: int | None = None,
                where: str = "parallel.sp") -> None:
    """ConfigError unless `sp` divides the head count and the chunk's tokens (one line, the fix named)."""
    if num_heads % sp:
        divisors = [d for d in range(1, num_heads + 1) if num_heads % d == 0 and chunk_tokens % d == 0]
        raise ConfigError(f"{where}={sp} does not divide the model's {num_heads} attention heads (each rank holds "
                          f"heads/sp); use one of {divisors}")
    if chunk_tokens % sp:
        frames = f" ({frames_per_chunk} latent frames)" if frames_per_chunk else ""
        divisors = [d for d in range(1, num_heads + 1) if num_heads % d == 0 and chunk_tokens % d == 0]
        raise ConfigError(f"{where}={sp} does not divide the {chunk_tokens} tokens of a chunk{frames}; use one of "
                          f"{divisors} or change sampler.frames_per_chunk / height / width")


@attrs.frozen
class SingleDeviceLayout:
    """Every token and every head on this process: the core's default; each call is the identity."""

    name: str = "single_device"
    sp: int = 1
    sp_rank: int = 0

    def local_heads(self, num_heads: int) -> int:
        return num_heads

    def check(self, *, num_heads: int, chunk_tokens: int, where: str = "parallel.sp") -> None:
        pass

    def scatter(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return x

    def local_groups(self, t: torch.Tensor, tokens: int) -> torch.Tensor:
        return t

    def exchange_qkv(self, q: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return q, k, v

    def seq_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def heads_to_seq(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return x

    def reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def agree(self, value: Any) -> Any:
        return value

    def teacher_split(self, frames: int, frames_per_block: int) -> TeacherSplit:
        return TeacherSplit(0, frames, 0, frames)

    def reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().clone()

    def encode_video(self, codec: Any, video: torch.Tensor) -> torch.Tensor:
        return codec.encode(video)

    def take_traffic(self) -> dict:
        return attrs.asdict(Traffic())

    def describe(self) -> dict:
        return {"name": self.name, "sp": 1}
