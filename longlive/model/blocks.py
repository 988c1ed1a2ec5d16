"""The layers of the Wan2.2 DiT: fp32 norms, q/k-normed attention, the adaLN block and the output head.

Precision (matching the original, which runs these under fp32 autocast): the residual stream
`x` is float32 whatever the weight dtype; norms and adaLN modulation are computed in float32;
the inputs of Linear layers are cast to the activation dtype `dtype` (the weights' dtype).

adaLN layout: timesteps come per *group* of consecutive tokens: e0 [B, N, 6, dim] modulates
x [B, L, dim] seen as [B, N, L/N, dim]. N = 1 (one t per sample), N = F (one per latent frame,
the AR case) or N = L (one per token, Wan2.2 TI2V's frame-0-at-t=0 conditioning).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from longlive.model.rope import apply_rope

if TYPE_CHECKING:
    from longlive.cache import ChunkKV
    from longlive.layout import SequenceLayout
    from longlive.model.attention import AttentionKernel, PreparedMask
    from longlive.model.presets import DiTConfig


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in fp32 then cast back before the gain (Wan's WanRMSNorm)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (input and affine parameters upcast); returns fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class WanAttention(nn.Module):
    """q/k/v/o projections with RMS q/k-norm over the full width; the attention itself is done by the caller."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., L, dim] -> q [..., L, H, D]."""
        return self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))

    def project_kv(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src [..., L, dim] -> k, v [..., L, H, D]."""
        k = self.norm_k(self.k(src)).unflatten(-1, (self.num_heads, -1))
        v = self.v(src).unflatten(-1, (self.num_heads, -1))
        return k, v

    def project_out(self, y: torch.Tensor) -> torch.Tensor:
        """y [..., L, H, D] -> [..., L, dim]."""
        return self.o(y.flatten(-2))


def _grouped(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, L, dim] -> [B, N, L/N, dim]: the tokens that share one timestep."""
    return x.unflatten(1, (groups, -1))


class WanBlock(nn.Module):
    """Self-attention (adaLN, gated) -> cross-attention (affine norm3, no gate) -> FFN (adaLN, gated)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanAttention(dim, config.num_heads, eps)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True)  # Wan's name for the cross-attn norm
        self.cross_attn = WanAttention(dim, config.num_heads, eps)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,  # [B, L, dim] fp32 residual stream
        e0: torch.Tensor,  # [B, N, 6, dim] fp32 time projection
        context: torch.Tensor,  # [B, Lt, dim] or [B, n, Lt, dim] embedded text
        *,
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin [L, D/2]
        attention: AttentionKernel,
        mask: PreparedMask | None,
        kv: ChunkKV | None,
        layer: int,
        segments: int,
        dtype: torch.dtype,
        layout: SequenceLayout | None = None,  # tokens split over ranks (longlive/layout.py); None: all here
    ) -> torch.Tensor:
        n = e0.shape[1]
        mod = (self.modulation.float() + e0).unsqueeze(2)  # [B, N, 1, 6, dim]
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.unbind(3)  # each [B, N, 1, dim]

        h = (_grouped(self.norm1(x), n) * (1 + scale_sa) + shift_sa).flatten(1, 2).to(dtype)
        y = self._self_attention(h, rope=rope, attention=attention, mask=mask, kv=kv, layer=layer, layout=layout)
        x = x + (_grouped(y.float(), n) * gate_sa).flatten(1, 2)

        y = self._cross_attention(self.norm3(x).to(dtype), context, attention=attention, segments=segments)
        x = x + y.float()

        h = (_grouped(self.norm2(x), n) * (1 + scale_ff) + shift_ff).flatten(1, 2).to(dtype)
        y = self.ffn(h)
        return x + (_grouped(y.float(), n) * gate_ff).flatten(1, 2)

    def _self_attention(self, h: torch.Tensor, *, rope: tuple[torch.Tensor, torch.Tensor],
                        attention: AttentionKernel, mask: PreparedMask | None, kv: ChunkKV | None,
                        layer: int, layout: SequenceLayout | None = None) -> torch.Tensor:
        """Self-attention of h [B, L, dim]; with `kv`, over the cache's visible keys plus this chunk's.

        Under a layout that splits the sequence, h holds this rank's L/sp tokens: Q, K and V
        (roped with this rank's rows) go through one all-to-all to all L tokens and H/sp heads,
        attention and the cache work on those heads, and the output comes back to L/sp tokens."""
        attn = self.self_attn
        q = apply_rope(attn.project_q(h), *rope)  # [B, L, H, D]
        k, v = attn.project_kv(h)
        k = apply_rope(k, *rope)
        if layout is not None and layout.sp > 1:
            q, k, v = layout.exchange_qkv(q, k, v)  # each [B, L, H/sp, D]
        if kv is not None:
            k, v = kv.attend_kv(layer, k, v)  # [B, Lk, H, D], this chunk's included
        y = attention(q, k, v, mask)
        if layout is not None and layout.sp > 1:
            y = layout.heads_to_seq(y)  # [B, L/sp, H, D]
        return attn.project_out(y)

    def _cross_attention(self, h: torch.Tensor, context: torch.Tensor, *, attention: AttentionKernel,
                         segments: int) -> torch.Tensor:
        """Cross-attention of h [B, L, dim] to the text; per-chunk text [B, n, Lt, dim] is seen by its chunk only.

        The sequence is `segments` copies (1, or 2 for [clean ; noisy]) of n equal chunks; tokens
        of chunk i in every segment attend to context[:, i].
        """
        attn = self.cross_attn
        if context.ndim == 3:
            k, v = attn.project_kv(context)  # [B, Lt, H, D]
            return attn.project_out(attention(attn.project_q(h), k, v))
        n = context.shape[1]
        h = rearrange(h, "b (s n l) d -> (b n) (s l) d", s=segments, n=n)
        k, v = attn.project_kv(rearrange(context, "b n t d -> (b n) t d"))
        y = attn.project_out(attention(attn.project_q(h), k, v))  # [(B n), (s l), dim]
        return rearrange(y, "(b n) (s l) d -> b (s n l) d", s=segments, n=n)


class WanHead(nn.Module):
    """Final adaLN (2 vectors, from the time embedding e, not e0) and the linear to patch pixels."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.norm = FP32LayerNorm(config.dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(config.dim, config.patch_channels)
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / config.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x [B, L, dim] fp32, e [B, N, dim] fp32 -> [B, L, out_channels * prod(patch)]."""
        n = e.shape[1]
        mod = (self.modulation.float() + e.unsqueeze(2)).unsqueeze(2)  # [B, N, 1, 2, dim]
        shift, scale = mod.unbind(3)  # each [B, N, 1, dim]
        h = (_grouped(self.norm(x), n) * (1 + scale) + shift).flatten(1, 2)
        return self.head(h.to(dtype))
