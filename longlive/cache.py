"""The self-attention KV cache of chunked AR inference: fixed chunk slots written in place.

Why slots. Softmax attention does not depend on the order of its keys once RoPE has been
applied to them (the cache stores roped keys). So the cache is a fixed set of `num_slots`
slots of one chunk each; a new chunk is written into a free slot, or into the slot of the chunk
that just left the window, and nothing is ever shifted, cloned or reallocated.

Layout (`BF16Storage`). One buffer for K and one for V, each
    [num_layers, B, H, num_slots * chunk_tokens, D]
allocated once. Slot s of layer l is `buf[l, :, :, s*T:(s+1)*T]` (T = chunk_tokens). Reading a
contiguous slot range is a view, returned as [B, n*T, H, D] (the protocol's layout) whose
[B, H, n*T, D] transpose, the form attention kernels take, is contiguous. On an H100 the cuDNN
kernel runs as fast on strided [B, L, H, D] keys as on dense ones (benchmarks/attention_layout.py);
the whole 5B loop measured 26.37 FPS with this layout against 26.19-26.20 with [.., T, H, D]
buffers (docs/benchmarks.md). Writing a chunk is one strided copy. A non-contiguous slot set is
concatenated (a copy); the default policy never asks for one.

Protocol, per chunk i (`KVCache`):
1. `kv = cache.begin(i)`: the policy plans chunk i: its *working slot* (where its K/V go),
   the *visible slots* (what its queries attend to, working slot included) and the temporal
   RoPE position of its first frame. Nothing changes yet.
2. Every forward of chunk i (each denoising step, then the clean t=0 pass) calls, per layer,
   `kv.attend_kv(layer, k, v)`, which hands this forward's K/V to the storage (`attend`) and gets
   the visible K/V back. The denoising forwards' ChunkKV has `keep=False`; the clean pass's
   (`cache.context(kv)`) and re-cache passes have `keep=True`: their K/V are the ones the cache
   keeps. The BF16 storage simply writes every forward's K/V into the working slot and returns a
   view of the visible slots; the working slot is a *scratch slot* until commit (empty, or
   holding the chunk that chunk i's arrival evicts, which no plan from chunk i on can see), so
   only the last forward's K/V survive. A quantized storage writes only the kept K/V (each chunk
   quantized once, layer by layer, as the clean pass computes them) and attends the chunk's own
   queries to its BF16 K/V, never to a dequantized copy of them.
3. `cache.commit(kv)`: the working slot now holds chunk i; later plans see it. The storage hears
   `begin(plan)`, `commit(plan)` and `reset()` too.

Two optional plan fields serve policies beyond the plain window (the attn_sink plugin):
- KV-cache-relative RoPE (`ChunkPlan.slot_rope_frames`): a plan may give every visible slot the
  temporal RoPE position its keys must carry during the chunk. The cache remembers the position
  each slot's keys were written or last turned at, and in `begin` turns the keys whose position
  moved, in place: RoPE rotations compose, R(a + d) = R(d) R(a), so one more rotation by the
  table of frame d (spatial pairs turn by 0) moves roped keys from frame a to a + d. Each turn
  rounds to the storage dtype once, so a policy should move a chunk a bounded number of times.
- A narrower clean pass (`ChunkPlan.context_slots`): the pipeline asks `cache.context(kv)` for
  the chunk's clean t=0 pass, which may see fewer slots than its denoising forwards (a scene cut
  that drops the previous shot from the cache re-caches the cut chunk without it).
`cache.recache(plan)` re-writes an already committed chunk's slot (re-cache under a new prompt).

Storages (e.g. NVFP4) and policies (sinks, relative RoPE) are plugged in through the small
`KVStorage` and `CachePolicy` protocols below.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs
import torch

from longlive.errors import ConfigError, LongLiveError
from longlive.layout import SequenceLayout, SingleDeviceLayout
from longlive.model.rope import apply_rope, rope_tables

if TYPE_CHECKING:
    from longlive.geometry import Geometry
    from longlive.model.presets import DiTConfig

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class CacheSpec:
    """Shape of the self-attention KV cache of one video (batch) and one model, on this rank.

    Under a sequence layout that splits heads (Ulysses SP), `num_heads` is this rank's share
    (`layout.local_heads`) and `chunk_tokens` the whole chunk: each rank caches heads/sp of every
    token of the window. Storages read `layout` for statistics over all heads (`reduce_max`).
    """

    num_layers: int
    batch: int
    num_heads: int  # heads held on this rank
    head_dim: int
    chunk_tokens: int  # tokens of one chunk = one slot
    frames_per_chunk: int  # latent frames of one chunk
    num_slots: int
    dtype: torch.dtype = torch.bfloat16
    device: torch.device = attrs.field(default=torch.device("cpu"), converter=torch.device)
    rope_theta: float = 10000.0  # the model's RoPE base, to re-rotate cached keys (relative RoPE)
    layout: SequenceLayout = attrs.field(factory=SingleDeviceLayout, eq=False)  # how the cached forwards split chunks

    @property
    def tokens(self) -> int:
        return self.num_slots * self.chunk_tokens

    @classmethod
    def for_model(cls, config: DiTConfig, geometry: Geometry, *, window_frames: int, batch: int,
                  dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
                  layout: SequenceLayout | None = None) -> CacheSpec:
        """Spec for `config` at `geometry`; the window (in latent frames) includes the chunk being denoised.
        The head count comes from `layout` (default: single device, all heads)."""
        fpc = geometry.frames_per_chunk
        if window_frames <= 0 or window_frames % fpc:
            raise ConfigError(
                f"window_frames={window_frames} must be a positive multiple of sampler.frames_per_chunk={fpc} "
                f"(the cache holds whole chunks); try {max(1, round(window_frames / fpc)) * fpc}"
            )
        if (geometry.patch_h, geometry.patch_w) != tuple(config.patch[1:]) or config.patch[0] != 1:
            raise ConfigError(
                f"geometry patch ({geometry.patch_h}, {geometry.patch_w}) does not match the patch "
                f"{config.patch} of DiT preset {config.name!r}"
            )
        layout = layout if layout is not None else SingleDeviceLayout()
        layout.check(num_heads=config.num_heads, chunk_tokens=geometry.chunk_tokens)
        return cls(num_layers=config.num_layers, batch=batch, num_heads=layout.local_heads(config.num_heads),
                   head_dim=config.head_dim, chunk_tokens=geometry.chunk_tokens, frames_per_chunk=fpc,
                   num_slots=window_frames // fpc, dtype=dtype, device=device, rope_theta=config.rope_theta,
                   layout=layout)


# ---- Storage ---------------------------------------------------------------------------------


@runtime_checkable
class KVStorage(Protocol):
    """Where cached K/V live. k, v are [B, chunk_tokens, H, D] (roped keys).

    The lifecycle (module docstring): `begin(plan)` when a chunk starts, `attend(...)` from every
    forward of it, `commit(plan)` when its working slot becomes visible, `reset()` for a new video.
    `write`/`read` give direct access to one slot (turning keys for relative RoPE, tests).
    """

    def attend(self, layer: int, plan: ChunkPlan, k: torch.Tensor, v: torch.Tensor, *,
               keep: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """This forward's k, v of `layer` in, the visible K, V [B, n*T, H, D] out (the chunk's own
        included; order irrelevant). `keep`: these K/V are the chunk's to hold (clean or re-cache pass)."""

    def begin(self, plan: ChunkPlan) -> None:
        """Chunk `plan.chunk_index` starts (before its first forward)."""

    def commit(self, plan: ChunkPlan) -> None:
        """The working slot of `plan` now holds its chunk for later chunks."""

    def reset(self) -> None:
        """A new video: no slot holds a chunk."""

    def write(self, layer: int, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one chunk's K/V of `layer` into `slot`, in place."""

    def read(self, layer: int, slots: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V [B, len(slots)*chunk_tokens, H, D] of `layer` over `slots` (order irrelevant)."""

    @property
    def nbytes(self) -> int:
        """Bytes held."""


class BF16Storage:
    """Plain storage in `spec.dtype` (bf16 by default): one preallocated buffer per K and V.

    Buffers are [num_layers, B, H, num_slots*chunk_tokens, D]; see the module docstring.
    """

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        shape = (spec.num_layers, spec.batch, spec.num_heads, spec.tokens, spec.head_dim)
        self.k = torch.zeros(shape, dtype=spec.dtype, device=spec.device)
        self.v = torch.zeros(shape, dtype=spec.dtype, device=spec.device)

    def _span(self, slot: int) -> slice:
        t = self.spec.chunk_tokens
        return slice(slot * t, (slot + 1) * t)

    def attend(self, layer: int, plan: ChunkPlan, k: torch.Tensor, v: torch.Tensor, *,
               keep: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Write every forward's K/V into the working (scratch) slot, read the visible slots as a view."""
        self.write(layer, plan.working_slot, k, v)
        return self.read(layer, plan.visible_slots)

    def begin(self, plan: ChunkPlan) -> None:
        pass

    def commit(self, plan: ChunkPlan) -> None:
        pass

    def reset(self) -> None:
        pass

    def write(self, layer: int, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        expected = (self.spec.batch, self.spec.chunk_tokens, self.spec.num_heads, self.spec.head_dim)
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ConfigError(
                f"KV cache built for chunks of {expected} (batch, tokens, heads, head_dim) got "
                f"k {tuple(k.shape)}, v {tuple(v.shape)}; build the cache from the same geometry and batch"
            )
        span = self._span(slot)
        self.k[layer, :, :, span].copy_(k.transpose(1, 2))  # [B, T, H, D] -> [B, H, T, D]
        self.v[layer, :, :, span].copy_(v.transpose(1, 2))

    def read(self, layer: int, slots: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        first, last = min(slots), max(slots)
        if last - first + 1 == len(slots):  # a contiguous range: a view, no copy
            span = slice(first * self.spec.chunk_tokens, (last + 1) * self.spec.chunk_tokens)
            return self.k[layer, :, :, span].transpose(1, 2), self.v[layer, :, :, span].transpose(1, 2)
        k = torch.cat([self.k[layer, :, :, self._span(s)] for s in sorted(slots)], dim=2)  # a copy
        v = torch.cat([self.v[layer, :, :, self._span(s)] for s in sorted(slots)], dim=2)
        return k.transpose(1, 2), v.transpose(1, 2)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


# ---- Policy ------------------------------------------------------------------------------------


@attrs.frozen
class ChunkPlan:
    """Where chunk `chunk_index` writes, what it sees, and its temporal RoPE start.

    Optional (see the module docstring): `slot_rope_frames`, aligned with `visible_slots`, the
    temporal RoPE start each visible slot's keys must carry during this chunk (None: keys keep
    the position they were written at); `context_slots`, the visible slots of the clean t=0 pass
    when they differ (a subset holding the working slot; None: `visible_slots`).
    """

    chunk_index: int
    working_slot: int
    visible_slots: tuple[int, ...]  # includes working_slot
    rope_start_frame: int
    slot_rope_frames: tuple[int, ...] | None = None
    context_slots: tuple[int, ...] | None = None


@runtime_checkable
class CachePolicy(Protocol):
    """Decides which slot each chunk uses and which slots its queries see."""

    def plan(self, chunk_index: int) -> ChunkPlan:
        """The plan of chunk `chunk_index`; must not change the policy's state."""

    def commit(self, plan: ChunkPlan) -> None:
        """Record that plan.working_slot now holds chunk plan.chunk_index."""

    def reset(self) -> None:
        """Forget every committed chunk."""


class SlidingWindowPolicy:
    """A window of the last `num_slots` chunks, the current one included; absolute RoPE.

    Slots fill in order 0, 1, 2, ... (the visible set is the contiguous prefix during warm-up
    and the whole buffer once full). When full, chunk i works in slot i % num_slots, which holds
    chunk i - num_slots: the chunk that falls out of the window exactly as chunk i needs a slot.
    Chunks must be committed in order 0, 1, 2, ...
    """

    def __init__(self, num_slots: int, frames_per_chunk: int) -> None:
        if num_slots <= 0 or frames_per_chunk <= 0:
            raise ConfigError(f"cache window of {num_slots} chunks of {frames_per_chunk} frames must be positive")
        self.num_slots = num_slots
        self.frames_per_chunk = frames_per_chunk
        self.committed_chunks = 0  # chunks 0 .. committed_chunks-1 are in (or have passed through) the cache

    def plan(self, chunk_index: int) -> ChunkPlan:
        if chunk_index != self.committed_chunks:
            raise LongLiveError(
                f"SlidingWindowPolicy: chunk {chunk_index} planned, but the next chunk is "
                f"{self.committed_chunks}; commit chunks in order or reset() the cache"
            )
        visible = tuple(range(min(chunk_index + 1, self.num_slots)))
        return ChunkPlan(chunk_index=chunk_index, working_slot=chunk_index % self.num_slots,
                         visible_slots=visible, rope_start_frame=chunk_index * self.frames_per_chunk)

    def commit(self, plan: ChunkPlan) -> None:
        if plan.chunk_index != self.committed_chunks:
            raise LongLiveError(
                f"SlidingWindowPolicy: commit of chunk {plan.chunk_index}, expected chunk {self.committed_chunks}"
            )
        self.committed_chunks += 1

    def reset(self) -> None:
        self.committed_chunks = 0


# ---- The cache -----------------------------------------------------------------------------------


class ChunkKV:
    """The cache as one chunk's forwards see it: see the module docstring, step 2."""

    def __init__(self, cache: KVCache, plan: ChunkPlan, *, keep: bool = False) -> None:
        self.cache = cache
        self.plan = plan
        self.keep = keep  # this view's forwards produce the K/V the cache keeps (clean or re-cache pass)

    @property
    def rope_start_frame(self) -> int:
        return self.plan.rope_start_frame

    @property
    def layout(self) -> SequenceLayout:
        """The sequence layout the cache was built for; the cached forward runs in it."""
        return self.cache.spec.layout

    @torch.compiler.disable
    def attend_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hand this chunk's roped k, v [B, T, H, D] to the storage; return the visible K, V.

        Excluded from torch.compile on purpose: the layer index and slot plan are Python ints that
        would specialise (and recompile) a compiled block per layer and per chunk, and in-place
        writes into a cache-sized graph input risk a functionalised copy of the whole buffer.
        Storages may run their own kernels here (NVFP4 quantize-on-write).

        A forward that carries gradients (a training rollout's exit step: grad mode on and k or v
        requiring grad) stores detached K/V as usual, but attends to the live k, v for its own
        chunk and to a copy (torch.cat) of the other visible slots: gradients reach this chunk's K/V, and
        later writes into the cache cannot invalidate the tensors autograd saved.
        """
        if not (torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)):
            return self.cache.storage.attend(layer, self.plan, k, v, keep=self.keep)
        self.cache.storage.attend(layer, self.plan, k.detach(), v.detach(), keep=self.keep)
        others = tuple(s for s in self.plan.visible_slots if s != self.plan.working_slot)
        if not others:
            return k, v
        k_old, v_old = self.cache.storage.read(layer, others)  # [B, n*T, H, D]
        return (torch.cat([k_old.to(k.dtype), k], dim=1),
                torch.cat([v_old.to(v.dtype), v], dim=1))


class KVCache:
    """Self-attention KV cache of one video: a storage, a policy, and the begin/commit protocol."""

    def __init__(self, spec: CacheSpec, storage: KVStorage | None = None, policy: CachePolicy | None = None) -> None:
        """Defaults: BF16Storage(spec) and a SlidingWindowPolicy over all slots."""
        self.spec = spec
        self.storage = storage if storage is not None else BF16Storage(spec)
        self.policy = policy if policy is not None else SlidingWindowPolicy(spec.num_slots, spec.frames_per_chunk)
        self.slot_frames: list[int | None] = [None] * spec.num_slots  # RoPE start the keys of each slot carry
        log.debug("KV cache: %d slots x %d tokens, %.2f GB", spec.num_slots, spec.chunk_tokens, self.nbytes / 1e9)

    def begin(self, chunk_index: int) -> ChunkKV:
        """Start chunk `chunk_index`: plan it; the cache's visible contents are unchanged."""
        plan = self.policy.plan(chunk_index)
        assert plan.working_slot in plan.visible_slots, plan
        self._reposition(plan)
        self.storage.begin(plan)
        return ChunkKV(self, plan)

    def context(self, chunk_kv: ChunkKV) -> ChunkKV:
        """The ChunkKV of the chunk's clean t=0 pass (its K/V are kept): the plan's visible slots,
        or the narrower `context_slots`."""
        plan = chunk_kv.plan
        if plan.context_slots is None:
            return ChunkKV(self, plan, keep=True)
        assert plan.working_slot in plan.context_slots and set(plan.context_slots) <= set(plan.visible_slots), plan
        return ChunkKV(self, attrs.evolve(plan, visible_slots=plan.context_slots, context_slots=None,
                                          slot_rope_frames=None), keep=True)  # keys were placed by begin()

    def recache(self, plan: ChunkPlan) -> ChunkKV:
        """A ChunkKV whose forwards re-write the slot of the already committed chunk `plan.chunk_index`.

        For re-cache (re-running committed chunks under a new prompt): its forwards overwrite
        `plan.working_slot` in place and attend to `plan.visible_slots`. Never commit it: what
        later chunks see does not change, only the contents of a slot they already see.
        """
        assert plan.working_slot in plan.visible_slots, plan
        self._reposition(plan)
        self.slot_frames[plan.working_slot] = plan.rope_start_frame
        return ChunkKV(self, plan, keep=True)

    def commit(self, chunk_kv: ChunkKV) -> None:
        """Make the chunk's working slot (as its last forward left it) visible to later chunks."""
        if chunk_kv.cache is not self:
            raise LongLiveError("KVCache.commit: this ChunkKV was begun on another cache")
        self.policy.commit(chunk_kv.plan)
        self.storage.commit(chunk_kv.plan)
        self.slot_frames[chunk_kv.plan.working_slot] = chunk_kv.plan.rope_start_frame

    def reset(self) -> None:
        """Start a new video: forget all chunks (the buffers are kept and overwritten)."""
        self.policy.reset()
        self.storage.reset()
        self.slot_frames = [None] * self.spec.num_slots

    def _reposition(self, plan: ChunkPlan) -> None:
        """Turn cached keys to the RoPE positions `plan.slot_rope_frames` asks for (relative RoPE)."""
        if plan.slot_rope_frames is None:
            return
        assert len(plan.slot_rope_frames) == len(plan.visible_slots), plan
        for slot, frame in zip(plan.visible_slots, plan.slot_rope_frames):
            held = self.slot_frames[slot]
            if slot == plan.working_slot or held == frame:
                continue
            if held is None:
                raise LongLiveError(f"KV cache: chunk {plan.chunk_index} sees slot {slot}, which holds no chunk")
            self.rotate_keys(slot, frame - held)
            self.slot_frames[slot] = frame

    def rotate_keys(self, slot: int, delta_frames: int) -> None:
        """Move the keys of `slot` (every layer) by `delta_frames` temporal RoPE positions, in place.

        Goes through the storage's read and write, so every storage supports it (a quantized
        storage re-quantizes); V is written back unchanged.
        """
        spec = self.spec
        cos, sin = rope_tables(1, 1, 1, spec.head_dim, start_frame=delta_frames, device=spec.device,
                               theta=spec.rope_theta)  # [1, D/2]; the spatial pairs turn by 0
        for layer in range(spec.num_layers):
            k, v = self.storage.read(layer, (slot,))  # [B, T, H, D]
            self.storage.write(layer, slot, apply_rope(k, cos, sin), v)

    @property
    def nbytes(self) -> int:
        return self.storage.nbytes
