"""Per-rank work of one teacher-forcing training sample under SP, from the shapes alone (no torch).

For a video of F latent frames, T tokens per frame, blocks of b frames (S = b T tokens, n = F/b
blocks), a DiT of N layers, width d, FFN width f, H heads of D channels, text length t, sp ranks;
rank r holds P = 2 F T / sp tokens (`TeacherSplit`) of which `loss` are noisy. Forward FLOPs
(a multiply-add = 2 FLOPs; the backward costs about twice the forward):

    GEMMs (per layer)     P (4 + 2) 2 d^2 + P 2 (2 d f)      self q, k, v, o + cross q, o, FFN
                          + k 2 (2 t d^2)                    cross k, v of the rank's k prompts
    self-attention        4 D (H / sp) pairs                 every query, H/sp heads after the all-to-all;
                          pairs = S^2 n (n + 1)              the teacher-forcing mask's allowed pairs
    cross-attention       4 P t d
    head                  2 loss d C                          the only term that follows the loss tokens

Activation memory with block checkpointing: the fp32 residual stream entering each block, P d 4 N
bytes (plus one block's working set during its recompute). VAE: latents the rank encodes
(balanced: its F/sp plus a halo; naive: the whole video, LongLive's baseline encodes it on one
rank, every rank needs its part).
"""
from __future__ import annotations

import attrs

from longlive.layout import TeacherSplit


@attrs.frozen(kw_only=True)
class RankCost:
    rank: int
    tokens: int
    loss_tokens: int
    gemm_flops: float
    self_attention_flops: float
    cross_attention_flops: float
    head_flops: float
    residual_bytes: float
    vae_latents: int

    @property
    def forward_flops(self) -> float:
        return self.gemm_flops + self.self_attention_flops + self.cross_attention_flops + self.head_flops


def mask_pairs(frames: int, tokens_per_frame: int, frames_per_block: int) -> int:
    """Allowed (query, key) pairs of the teacher-forcing mask over [clean ; noisy] (any order)."""
    block, blocks = frames_per_block * tokens_per_frame, frames // frames_per_block
    return block * block * blocks * (blocks + 1)  # clean: S^2 n(n+1)/2, noisy the same


def rank_costs(splits: list[TeacherSplit], *, frames: int, tokens_per_frame: int, frames_per_block: int,
               layers: int, dim: int, ffn_dim: int, heads: int, head_dim: int, text_len: int, out_channels: int,
               vae_latents: list[int]) -> list[RankCost]:
    """The cost of every rank of an SP group (one per split) for one sample (module docstring)."""
    sp = len(splits)
    pairs = mask_pairs(frames, tokens_per_frame, frames_per_block)
    out = []
    for rank, split in enumerate(splits):
        tokens = (split.clean_frames + split.noisy_frames) * tokens_per_frame
        prompts = (split.clean_frames + split.noisy_frames) // frames_per_block  # one prompt per chunk
        gemm = layers * (tokens * 6 * 2 * dim * dim + tokens * 2 * 2 * dim * ffn_dim + prompts * 2 * 2 * text_len * dim * dim)
        loss_tokens = split.noisy_frames * tokens_per_frame
        out.append(RankCost(rank=rank, tokens=tokens, loss_tokens=loss_tokens, gemm_flops=float(gemm),
                            self_attention_flops=float(layers * 4 * head_dim * heads // sp * pairs),
                            cross_attention_flops=float(layers * 4 * tokens * text_len * dim),
                            head_flops=float(2 * loss_tokens * dim * out_channels),
                            residual_bytes=float(tokens * dim * 4 * layers), vae_latents=vae_latents[rank]))
    return out
