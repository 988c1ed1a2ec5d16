"""Teacher-forcing training under Ulysses SP: the Balanced layout and the naive baseline.

Teacher forcing runs the DiT on a clean and a noisy copy of a video of F latent frames (2 L
tokens, L = F x tokens per frame; `WanDiT.forward_teacher`). With sp ranks, rank r holds 2 L/sp
tokens of it and self-attention exchanges heads for tokens (the Ulysses all-to-all of
`UlyssesLayout`, differentiable: the backward of one all-to-all is the other):

    balanced  rank r holds [clean frames [r F/sp, (r+1) F/sp) ; noisy frames of the same slice].
              Gathered by the all-to-all, the sequence is [clean_0 ; noisy_0 ; clean_1 ; ...]:
              the teacher-forcing mask of sp slices (one mask function, attention.py). Every
              rank holds F/sp loss-bearing (noisy) frames and their clean context.
    naive     the sequence [all clean ; all noisy] cut into sp contiguous pieces (the baseline):
              gathered it is [clean ; noisy] (the mask of one slice); with sp = 2 rank 0 holds
              only clean frames and computes no loss, rank 1 all of the loss.

Both give the single-device loss and gradients (the tests check it): RoPE rows of global frame
indices, per-frame timesteps and per-chunk prompts of the rank's frames, the loss of the rank's
noisy frames normalised by the global count of loss-bearing frames (the objective), the
replicated parameters' gradients summed over the SP group (the trainer's DDP).

Encoding (`encode_video`, the trainer's BatchEncoder): a Balanced rank encodes only its latent frames
plus a left halo (halo.py; exact for the toy codec, approximate for the Wan2.2 VAE); naive ranks,
and `vae_encode = "whole"`, encode the whole sample.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from longlive.errors import ConfigError
from longlive.layout import TeacherSplit
from longlive.parallel import ParallelMesh
from longlive_plugins.sp_balanced.halo import encode_with_halo
from longlive_plugins.sp_balanced.ulysses import UlyssesLayout

TRAINING_LAYOUTS = ("balanced", "naive")


def balanced_split(frames: int, sp: int, rank: int) -> TeacherSplit:
    """Rank `rank` holds the clean and the noisy copy of frames [rank F/sp, (rank+1) F/sp)."""
    if frames % sp:
        raise ConfigError(f"training_layout = \"balanced\": parallel.sp={sp} does not divide the {frames} latent "
                          f"frames of a training sample; make train.num_frames (in latent frames) a multiple of {sp}")
    per = frames // sp
    return TeacherSplit(rank * per, per, rank * per, per, mask_slices=sp)


def naive_split(frames: int, sp: int, rank: int) -> TeacherSplit:
    """Rank `rank` holds piece `rank` of sp contiguous pieces of [clean frames ; noisy frames]."""
    if 2 * frames % sp:
        raise ConfigError(f"training_layout = \"naive\": parallel.sp={sp} does not divide the {2 * frames} frames of "
                          f"[clean ; noisy]; change train.num_frames")
    piece = 2 * frames // sp
    start, end = rank * piece, (rank + 1) * piece
    clean_start, clean_end = min(start, frames), min(end, frames)
    noisy_start, noisy_end = max(start, frames), max(end, frames)
    return TeacherSplit(clean_start, clean_end - clean_start, noisy_start - frames, noisy_end - noisy_start,
                        mask_slices=1)


class TeacherForcingUlysses(UlyssesLayout):
    """UlyssesLayout that also splits teacher-forcing training (`training_layout`: balanced | naive)."""

    def __init__(self, mesh: ParallelMesh, *, training_layout: str = "balanced", kv_exchange: str = "activation",
                 vae_halo: int | None = None, temporal_stride: int = 4) -> None:
        if training_layout not in TRAINING_LAYOUTS:
            raise ValueError(f"training_layout={training_layout!r} is not one of {TRAINING_LAYOUTS}")
        super().__init__(mesh, kv_exchange=kv_exchange)
        self.training_layout = training_layout
        self.name = f"ulysses_{training_layout}"
        # Balanced: encode the rank's latents plus a left halo of `vae_halo` latents (None: the whole video)
        self.vae_halo, self.temporal_stride = vae_halo, temporal_stride

    def teacher_split(self, frames: int, frames_per_block: int) -> TeacherSplit:
        split = balanced_split if self.training_layout == "balanced" else naive_split
        return split(frames, self.sp, self.sp_rank)

    @torch.compiler.disable
    def reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        out = x.detach().clone()
        self._count("all_reduce", 2 * out.numel() * out.element_size() * (self.sp - 1) // self.sp)
        dist.all_reduce(out, group=self.group)
        return out

    def encode_video(self, codec: Any, video: torch.Tensor) -> torch.Tensor:
        """Balanced with a halo: only this rank's latent frames, encoded from its pixel window plus the
        halo (halo.py), the others left zero (its `teacher_split` never reads them); else the whole video."""
        if self.training_layout != "balanced" or self.vae_halo is None:
            return codec.encode(video)
        stride, pixels = self.temporal_stride, video.shape[2]
        if (pixels - 1) % stride:
            raise ConfigError(f"sp_balanced halo encode: {pixels} pixel frames are not 1 + {stride} k; check "
                              "train.num_frames against the codec")
        frames = 1 + (pixels - 1) // stride
        split = balanced_split(frames, self.sp, self.sp_rank)
        start, end = split.noisy_start, split.noisy_start + split.noisy_frames
        part = encode_with_halo(codec, video, start, end, self.vae_halo, stride)  # [B, C, end - start, h, w]
        latents = part.new_zeros(*part.shape[:2], frames, *part.shape[3:])
        latents[:, :, start:end] = part
        return latents

    def describe(self) -> dict:
        return {**super().describe(), "training_layout": self.training_layout, "vae_halo": self.vae_halo}
