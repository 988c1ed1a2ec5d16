"""UlyssesLayout: a chunk's tokens split over the SP ranks, heads exchanged around self-attention.

Per cached forward of a chunk of L tokens, H heads of D channels, sp ranks (rank r):

    tokens, RoPE rows, timesteps      rank r takes tokens [r*L/sp, (r+1)*L/sp): a local slice of
                                      identical inputs, nothing sent (longlive/layout.py)
    per layer, self-attention         Q, K, V [B, L/sp, H, D] stacked -> one all-to-all ->
                                      [B, L, H/sp, D] (rank r: heads [r*H/sp, (r+1)*H/sp));
                                      the KV cache of rank r holds those heads of the whole window;
                                      attention; output [B, L, H/sp, D] -> one all-to-all ->
                                      [B, L/sp, H, D] -> the output projection
    cross-attention, FFN, adaLN       token-local
    head                              its output [B, L/sp, C] is all-gathered -> [B, L, C]

Attention over a head needs every key of that head and nothing of the others, and the
all-to-alls only move rows, so the result equals the single-device forward up to the
summation order of the linears on fewer rows (fp32: ~1e-7; tests/test_ulysses.py).

The all-to-alls are autograd functions (the backward of one is the other), so part 2 (training,
issue #18) can differentiate through them; the scatter is a slice (gradients of the replicated
parameters are then summed over the SP group) and the gather's backward takes this rank's rows.

Collectives run outside torch.compile (`torch.compiler.disable`), like the KV-cache call.

Optionally (`kv_exchange = "fp8"`) K and V cross the all-to-all as FP8 E4M3 codes with one FP32
scale per token and head (D + 4 bytes a row instead of 2 D in BF16): the Q, K, V exchange sends
about 2/3 of its bytes, and every rank (the sender included) attends to and caches the rounded
K and V, so the output is no longer the single-device one (docs/parallel.md measures the change).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from longlive.layout import Traffic, check_split, local_groups
from longlive.parallel import ParallelMesh

KV_EXCHANGES = ("activation", "fp8")  # how K and V cross the all-to-all (plugin README)
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def _all_to_all(send: torch.Tensor, group: Any) -> torch.Tensor:
    """send [sp, ...] contiguous: piece j goes to rank j; returns [sp, ...] with piece j from rank j."""
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv


def seq_to_heads(x: torch.Tensor, sp: int, group: Any) -> torch.Tensor:
    """[..., B, L/sp, H, D] (this rank's tokens) -> [..., B, L, H/sp, D] (this rank's heads)."""
    *lead, b, local, h, d = x.shape
    send = x.reshape(*lead, b, local, sp, h // sp, d).movedim(-3, 0).contiguous()  # [sp, ..., B, L/sp, H/sp, D]
    recv = _all_to_all(send, group)  # piece j: rank j's tokens, our heads
    return recv.movedim(0, -4).reshape(*lead, b, sp * local, h // sp, d)


def heads_to_seq(y: torch.Tensor, sp: int, group: Any) -> torch.Tensor:
    """[..., B, L, H/sp, D] (this rank's heads) -> [..., B, L/sp, H, D] (this rank's tokens)."""
    *lead, b, length, hs, d = y.shape
    send = y.reshape(*lead, b, sp, length // sp, hs, d).movedim(-4, 0).contiguous()  # piece j: rank j's tokens
    recv = _all_to_all(send, group)  # piece j: rank j's heads of our tokens
    return recv.movedim(0, -3).reshape(*lead, b, length // sp, sp * hs, d)


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sp: int, group: Any) -> torch.Tensor:
        ctx.sp, ctx.group = sp, group
        return seq_to_heads(x, sp, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        return heads_to_seq(grad.contiguous(), ctx.sp, ctx.group), None, None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, sp: int, group: Any) -> torch.Tensor:
        ctx.sp, ctx.group = sp, group
        return heads_to_seq(y, sp, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        return seq_to_heads(grad.contiguous(), ctx.sp, ctx.group), None, None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int, sp: int, rank: int, group: Any) -> torch.Tensor:
        ctx.dim, ctx.sp, ctx.rank, ctx.size = dim, sp, rank, x.shape[dim]
        pieces = [torch.empty_like(x) for _ in range(sp)]
        dist.all_gather(pieces, x.contiguous(), group=group)
        return torch.cat(pieces, dim=dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        return grad.narrow(ctx.dim, ctx.rank * ctx.size, ctx.size), None, None, None, None


class UlyssesLayout:
    """The sequence-layout role for sp > 1 (module docstring). State: the SP group and the traffic
    counter of this rank (`take_traffic`, logged per chunk by the plugin)."""

    name = "ulysses"

    def __init__(self, mesh: ParallelMesh, *, kv_exchange: str = "activation") -> None:
        if mesh.sp < 2:
            raise ValueError(f"UlyssesLayout needs sp >= 2, got a mesh with sp={mesh.sp}")
        if kv_exchange not in KV_EXCHANGES:
            raise ValueError(f"kv_exchange={kv_exchange!r} is not one of {KV_EXCHANGES}")
        self.sp, self.sp_rank = mesh.sp, mesh.sp_rank
        self.kv_exchange = kv_exchange
        self.group = mesh.group("sp")
        self.traffic = Traffic()

    def __repr__(self) -> str:
        return f"UlyssesLayout(sp={self.sp}, sp_rank={self.sp_rank}, kv_exchange={self.kv_exchange!r})"

    def local_heads(self, num_heads: int) -> int:
        if num_heads % self.sp:
            raise ValueError(f"ulysses: {num_heads} heads do not split over sp={self.sp} ranks")
        return num_heads // self.sp

    def check(self, *, num_heads: int, chunk_tokens: int, where: str = "parallel.sp") -> None:
        check_split(self.sp, num_heads=num_heads, chunk_tokens=chunk_tokens, where=where)

    def scatter(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        size = x.shape[dim]
        if size % self.sp:
            raise ValueError(f"ulysses: {size} rows along dim {dim} do not split over sp={self.sp} ranks")
        per = size // self.sp
        return x.narrow(dim, self.sp_rank * per, per)

    def local_groups(self, t: torch.Tensor, tokens: int) -> torch.Tensor:
        return local_groups(t, tokens, self.sp, self.sp_rank)

    def exchange_qkv(self, q: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One all-to-all of the stacked q, k, v; with kv_exchange "fp8", q alone and K, V as FP8."""
        if self.kv_exchange == "activation":
            q, k, v = self.seq_to_heads(torch.stack([q, k, v])).unbind(0)
            return q, k, v
        k, v = self._fp8_to_heads(torch.stack([k, v])).unbind(0)
        return self.seq_to_heads(q), k, v

    @torch.compiler.disable
    def _fp8_to_heads(self, kv: torch.Tensor) -> torch.Tensor:
        """[2, B, L/sp, H, D] -> [2, B, L, H/sp, D] through FP8 E4M3 codes and one FP32 scale per
        (token, head): the row's amax maps to 448. Inference only (no gradient through the cast)."""
        scale = kv.float().abs().amax(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / FP8_MAX
        codes = (kv.float() / scale).to(torch.float8_e4m3fn).view(torch.uint8)
        for part in (codes, scale):
            self._count("all_to_all", part.numel() * part.element_size() * (self.sp - 1) // self.sp)
        codes, scale = seq_to_heads(codes, self.sp, self.group), seq_to_heads(scale, self.sp, self.group)
        return (codes.view(torch.float8_e4m3fn).float() * scale).to(kv.dtype)

    @torch.compiler.disable
    def seq_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        self._count("all_to_all", x.numel() * x.element_size() * (self.sp - 1) // self.sp)
        return _SeqToHeads.apply(x, self.sp, self.group)

    @torch.compiler.disable
    def heads_to_seq(self, y: torch.Tensor) -> torch.Tensor:
        self._count("all_to_all", y.numel() * y.element_size() * (self.sp - 1) // self.sp)
        return _HeadsToSeq.apply(y, self.sp, self.group)

    @torch.compiler.disable
    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        self._count("all_gather", x.numel() * x.element_size() * (self.sp - 1))
        return _Gather.apply(x, dim, self.sp, self.sp_rank, self.group)

    @torch.compiler.disable
    def reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        out = x.detach().clone()
        self._count("all_reduce", 2 * out.numel() * out.element_size() * (self.sp - 1) // self.sp)  # ring
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=self.group)
        return out

    def agree(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=dist.get_global_rank(self.group, 0), group=self.group)
        return box[0]

    def take_traffic(self) -> dict:
        return self.traffic.take()

    def describe(self) -> dict:
        return {"name": self.name, "sp": self.sp, "sp_rank": self.sp_rank, "kv_exchange": self.kv_exchange,
                "self_attention": "all-to-all Q,K,V seq->heads (stacked), output heads->seq",
                "cache": "heads/sp per rank over the whole window", "gather": "head output, all-gather"}

    def _count(self, kind: str, nbytes: int) -> None:
        self.traffic.bytes_sent += nbytes
        setattr(self.traffic, kind, getattr(self.traffic, kind) + 1)
