"""Bytes the Ulysses layout's collectives move per chunk, from the shapes alone (no torch).

Per rank, bytes sent to the other ranks of its SP group (longlive.layout.Traffic defines the
count: an all-to-all of n local bytes sends n (sp-1)/sp, an all-gather of n local bytes sends
n (sp-1)). One chunk = `steps` denoising forwards + 1 clean context pass; per forward:

    self-attention, every layer   Q, K, V:  3 B L/sp H D e (sp-1)/sp     (one stacked all-to-all)
                                  output:   1 B L/sp H D e (sp-1)/sp     (one all-to-all)
    head output                             B L/sp C e' (sp-1)          (one all-gather)

(B batch, doubled under CFG; L chunk tokens; H heads; D head_dim; e activation bytes; C the
head's output channels, out_channels x prod(patch), e' their bytes.) A re-cache (attn_sink)
adds one forward per re-cached chunk; the kv_fp4 storage adds one 4-byte all-reduce of the
amax per layer, K and V, and kept forward (negligible, not in this formula).
"""
from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class ChunkTraffic:
    """The bytes one rank sends per chunk, split by collective."""

    sp: int
    qkv_all_to_all: int
    out_all_to_all: int
    gather: int
    forwards: int
    collectives: int

    @property
    def total(self) -> int:
        return self.qkv_all_to_all + self.out_all_to_all + self.gather

    @property
    def group_total(self) -> int:
        """Bytes sent by all ranks of the group together."""
        return self.total * self.sp


def chunk_traffic(*, sp: int, num_layers: int, num_heads: int, head_dim: int, chunk_tokens: int, batch: int,
                  cfg: bool, steps: int, head_channels: int, element_bytes: int,
                  head_element_bytes: int | None = None, kv_exchange: str = "activation") -> ChunkTraffic:
    """Bytes per rank and chunk of the Ulysses layout (module docstring); sp = 1 moves nothing.
    `kv_exchange` "fp8": K and V cross as 1-byte codes plus a 4-byte scale per token and head, in
    their own two all-to-alls (Q alone in a third)."""
    rows = batch * (2 if cfg else 1) * chunk_tokens // sp  # this rank's token rows
    forwards = steps + 1
    if sp == 1:
        return ChunkTraffic(sp=1, qkv_all_to_all=0, out_all_to_all=0, gather=0, forwards=forwards, collectives=0)
    sent = (sp - 1, sp)  # an all-to-all sends (sp-1)/sp of what it holds
    one = rows * num_heads * head_dim * element_bytes * sent[0] // sent[1]  # one of Q, K, V or the output
    if kv_exchange == "fp8":
        qkv = (one + 2 * rows * num_heads * head_dim * sent[0] // sent[1]
               + 2 * rows * num_heads * 4 * sent[0] // sent[1])
        per_layer = 4
    else:
        qkv = 3 * rows * num_heads * head_dim * element_bytes * sent[0] // sent[1]
        per_layer = 2
    head = rows * head_channels * (head_element_bytes or element_bytes) * (sp - 1)
    return ChunkTraffic(sp=sp, qkv_all_to_all=forwards * num_layers * qkv,
                        out_all_to_all=forwards * num_layers * one, gather=forwards * head,
                        forwards=forwards, collectives=forwards * (per_layer * num_layers + 1))
