"""SinkPolicy: a global sink, a per-shot sink and a local window in a fixed budget of chunk slots.

Visibility, in chunks (LongLive 2.0's multi-shot attention sink; reference notes section 3.4).
With g = sink chunks, p = shot-sink chunks, N = slots (the whole budget, `window_frames` /
`frames_per_chunk`), chunk i of the shot that started at chunk s sees:
- the global sink: chunks 0 .. g-1, pinned for the whole video;
- the shot sink: chunks s .. s+p-1 generated so far, pinned while the shot lasts (a shot start
  re-binds it; shot 0's sink overlaps the global sink);
- the local window: itself and the newest other chunks still cached, until N chunks are visible.
Chunk i works in the lowest slot holding none of the chunks it sees; a chunk whose slot is
overwritten is gone, and visibility only ever reaches chunks still held in a slot. The first
chunks fill slots 0, 1, 2, ..., and once the budget is full all N slots are visible: one
contiguous view, never copied (as the plain window). With g = p = 0 this is the core's
SlidingWindowPolicy, plan for plan.

Scene cuts with `clear_window_on_cut` (LongLive's `shot_clean_recache`): the cut chunk s is
denoised with the previous window, but its clean t=0 pass sees only the global sink and itself
(`ChunkPlan.context_slots`), and later chunks of the shot see no chunk of earlier shots other
than the global sink: the cache no longer holds the previous shot.

Temporal RoPE positions (frames):
- absolute (default): chunk i starts at i * frames_per_chunk + shot(i) * rope_shift_frames
  (LongLive: shot index x 8); keys keep that position while cached.
- relative (`relative_rope`): positions are laid out over the visible chunks only, in chunk
  order at 0, f, 2f, ... (f = frames_per_chunk), plus rope_shift_frames at each shot change
  between neighbours. Positions stay below N * (f + rope_shift_frames) however long the video;
  the cache turns cached keys in place when their position moves (longlive/cache.py), a few
  times per cached chunk (window chunks move down until they leave; sinks settle). With no sinks and no cuts that
  clear the window, the layout is the absolute one shifted by a constant, which attention does
  not see.
"""
from __future__ import annotations

import logging

import attrs

from longlive.cache import ChunkPlan
from longlive.errors import ConfigError, LongLiveError

log = logging.getLogger(__name__)


@attrs.frozen
class _Slot:
    """What one slot holds: a committed chunk and the shot it belongs to."""

    chunk: int
    shot: int


class SinkPolicy:
    """Global sink + shot sink + local window over `num_slots` chunk slots (see the module docstring)."""

    def __init__(self, *, num_slots: int, frames_per_chunk: int, sink_chunks: int = 0, shot_sink_chunks: int = 0,
                 rope_shift_frames: int = 0, clear_window_on_cut: bool = False, relative_rope: bool = False) -> None:
        if min(sink_chunks, shot_sink_chunks, rope_shift_frames) < 0 or frames_per_chunk <= 0:
            raise ConfigError(f"attn_sink: sink chunks {sink_chunks}, shot-sink chunks {shot_sink_chunks}, "
                              f"rope shift {rope_shift_frames} must be >= 0 and frames_per_chunk > 0")
        if sink_chunks + shot_sink_chunks + 1 > num_slots:
            raise ConfigError(f"attn_sink: {sink_chunks} sink + {shot_sink_chunks} shot-sink chunks leave no slot for "
                              f"the chunk being generated in a window of {num_slots} chunks; enlarge the window")
        self.num_slots = num_slots
        self.frames_per_chunk = frames_per_chunk
        self.sink_chunks = sink_chunks
        self.shot_sink_chunks = shot_sink_chunks
        self.rope_shift_frames = rope_shift_frames
        self.clear_window_on_cut = clear_window_on_cut
        self.relative_rope = relative_rope
        self.reset()

    def reset(self) -> None:
        self.slots: list[_Slot | None] = [None] * self.num_slots
        self.next_chunk = 0  # the chunk the next plan is for
        self.shot_index = 0
        self.shot_start = 0  # first chunk of the current shot

    # ---- events ----------------------------------------------------------------------------------

    def start_shot(self, shot_index: int, chunk_index: int) -> None:
        """Shot `shot_index` starts at chunk `chunk_index` (the next chunk): re-bind the shot sink."""
        if chunk_index != self.next_chunk or shot_index < self.shot_index:
            raise LongLiveError(f"attn_sink: shot {shot_index} starts at chunk {chunk_index}, but the next chunk is "
                                f"{self.next_chunk} and shot {self.shot_index} is running; shots go forward")
        self.shot_index, self.shot_start = shot_index, chunk_index

    # ---- CachePolicy -----------------------------------------------------------------------------

    def plan(self, chunk_index: int) -> ChunkPlan:
        self._check_next(chunk_index, "planned")
        chunks = self.visible_chunks(chunk_index)
        slot_of = self._slot_of(chunk_index, chunks)
        frames = self._positions(chunk_index, chunks)
        visible_slots = tuple(sorted(slot_of[c] for c in chunks))
        by_slot = {s: c for c, s in slot_of.items()}
        context_chunks = self.context_chunks(chunk_index)
        context = tuple(sorted(slot_of[c] for c in context_chunks)) if context_chunks != chunks else None
        return ChunkPlan(chunk_index=chunk_index, working_slot=slot_of[chunk_index], visible_slots=visible_slots,
                         rope_start_frame=frames[chunk_index], context_slots=context,
                         slot_rope_frames=tuple(frames[by_slot[s]] for s in visible_slots) if self.relative_rope
                         else None)

    def commit(self, plan: ChunkPlan) -> None:
        self._check_next(plan.chunk_index, "committed")
        self.slots[plan.working_slot] = _Slot(plan.chunk_index, self.shot_index)
        self.next_chunk += 1

    # ---- queries -----------------------------------------------------------------------------------

    def visible_chunks(self, chunk_index: int) -> tuple[int, ...]:
        """The chunks (ascending, `chunk_index` included) that chunk `chunk_index` attends to."""
        cached = sorted((s.chunk for s in self.slots if s is not None), reverse=True)
        pinned = {c for c in cached if self._is_pinned(c)}
        floor = self.shot_start if self.clear_window_on_cut and chunk_index > self.shot_start else 0
        visible = pinned | {chunk_index}
        for c in cached:
            if len(visible) >= self.num_slots:
                break
            if c >= floor:
                visible.add(c)
        return tuple(sorted(visible))

    def context_chunks(self, chunk_index: int) -> tuple[int, ...]:
        """The chunks the clean t=0 pass of chunk `chunk_index` attends to (ascending)."""
        chunks = self.visible_chunks(chunk_index)
        if self.clear_window_on_cut and self._is_cut(chunk_index):
            return tuple(c for c in chunks if c < self.sink_chunks or c == chunk_index)
        return chunks

    def cached_chunks(self) -> tuple[int, ...]:
        """Committed chunks still held in a slot (ascending)."""
        return tuple(sorted(s.chunk for s in self.slots if s is not None))

    def recache_plans(self, chunk_index: int, *, include_sinks: bool) -> list[ChunkPlan]:
        """Plans that re-write the cached chunks chunk `chunk_index` will see, oldest first.

        For a prompt switch before chunk `chunk_index`: each re-written chunk attends to the
        chunks of that visible set up to itself (the re-written ones already rebuilt), at the
        positions chunk `chunk_index` will see. Sinks are kept unless `include_sinks`.
        """
        self._check_next(chunk_index, "re-cached")
        chunks = [c for c in self.visible_chunks(chunk_index) if c != chunk_index]
        slot_of = self._slot_of(chunk_index, chunks)
        frames = self._positions(chunk_index, [*chunks, chunk_index])
        plans = []
        for target in chunks:
            if self._is_pinned(target) and not include_sinks:
                continue
            seen = [c for c in chunks if c <= target]
            slots = tuple(sorted(slot_of[c] for c in seen))
            by_slot = {slot_of[c]: c for c in seen}
            plans.append(ChunkPlan(chunk_index=target, working_slot=slot_of[target], visible_slots=slots,
                                   rope_start_frame=frames[target],
                                   slot_rope_frames=tuple(frames[by_slot[s]] for s in slots)
                                   if self.relative_rope else None))
        return plans

    # ---- internals ---------------------------------------------------------------------------------

    def _check_next(self, chunk_index: int, what: str) -> None:
        if chunk_index != self.next_chunk:
            raise LongLiveError(f"attn_sink: chunk {chunk_index} {what}, but the next chunk is {self.next_chunk}; "
                                f"generate chunks in order or reset() the cache")

    def _is_pinned(self, chunk: int) -> bool:
        return chunk < self.sink_chunks or self.shot_start <= chunk < self.shot_start + self.shot_sink_chunks

    def _is_cut(self, chunk_index: int) -> bool:
        return chunk_index == self.shot_start and self.shot_index > 0

    def _slot_of(self, chunk_index: int, chunks) -> dict[int, int]:
        """Slot of every chunk in `chunks`; `chunk_index` gets the lowest slot holding none of them."""
        keep = set(chunks)
        slot_of = {s.chunk: i for i, s in enumerate(self.slots) if s is not None and s.chunk in keep}
        if chunk_index in keep:
            slot_of[chunk_index] = next(i for i, s in enumerate(self.slots) if s is None or s.chunk not in keep)
        return slot_of

    def _shot_of(self, chunk: int) -> int:
        if chunk == self.next_chunk:
            return self.shot_index
        return next(s.shot for s in self.slots if s is not None and s.chunk == chunk)

    def _positions(self, chunk_index: int, chunks) -> dict[int, int]:
        """Temporal RoPE start frame of each chunk in `chunks` (ascending) during chunk `chunk_index`."""
        f, shift = self.frames_per_chunk, self.rope_shift_frames
        if not self.relative_rope:
            return {c: c * f + self._shot_of(c) * shift for c in chunks}
        frames, pos, prev_shot = {}, 0, None
        for c in chunks:
            shot = self._shot_of(c)
            if prev_shot is not None:
                pos += f + (shift if shot != prev_shot else 0)
            frames[c], prev_shot = pos, shot
        return frames
