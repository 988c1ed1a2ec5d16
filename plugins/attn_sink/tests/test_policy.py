"""SinkPolicy invariants over many chunks and shots, identity with the plain window, RoPE positions."""
from __future__ import annotations

import random

import pytest

from longlive.cache import SlidingWindowPolicy
from longlive.errors import LongLiveError
from longlive_plugins.attn_sink.policy import SinkPolicy

FPC = 2


def _shot_starts(chunks: int, seed: int) -> dict[int, int]:
    """chunk -> shot index, random shot lengths of 1..7 chunks (1-chunk shots included on purpose)."""
    rng, starts, c = random.Random(seed), {0: 0}, 0
    while True:
        c += rng.randint(1, 7)
        if c >= chunks:
            return starts
        starts[c] = len(starts)


def _run(policy: SinkPolicy, chunks: int, shots: dict[int, int], check) -> None:
    """Drive the policy like the chunk loop (shot event, plan, commit), mirroring what each slot holds."""
    held: dict[int, int] = {}  # slot -> chunk, as written by commits
    for i in range(chunks):
        if i in shots:
            policy.start_shot(shots[i], i)
        plan = policy.plan(i)
        chunks_seen = policy.visible_chunks(i)
        assert {held.get(s) for s in plan.visible_slots if s != plan.working_slot} == set(chunks_seen) - {i}
        assert held.get(plan.working_slot) not in chunks_seen  # the working slot is scratch
        check(i, plan, chunks_seen, dict(held))
        held[plan.working_slot] = i
        policy.commit(plan)


@pytest.mark.parametrize("slots,sink,shot_sink,clear", [(4, 1, 1, False), (4, 1, 1, True), (6, 2, 2, False),
                                                        (6, 1, 3, True), (5, 0, 2, False), (3, 2, 0, False)])
@pytest.mark.parametrize("seed", [0, 1])
def test_sink_invariants(slots, sink, shot_sink, clear, seed):
    chunks = 120
    shots = _shot_starts(chunks, seed)
    policy = SinkPolicy(num_slots=slots, frames_per_chunk=FPC, sink_chunks=sink, shot_sink_chunks=shot_sink,
                        clear_window_on_cut=clear)
    sink_slots: dict[int, int] = {}
    shot_start = 0

    def check(i, plan, seen, held):
        nonlocal shot_start
        shot_start = i if i in shots else shot_start
        assert len(plan.visible_slots) == len(seen) <= slots  # the budget
        assert set(range(min(sink, i + 1))) <= set(seen)  # the global sink is always seen ...
        for c, s in sink_slots.items():
            assert held[s] == c and s != plan.working_slot  # ... and never evicted or overwritten
        assert set(range(shot_start, min(shot_start + shot_sink, i + 1))) <= set(seen)  # the current shot's sink
        pinned = {c for c in seen if c < sink or shot_start <= c < shot_start + shot_sink}
        window = sorted(set(seen) - pinned - {i})
        older = [c for c in held.values() if c not in pinned and c not in seen and (not clear or c >= shot_start)]
        assert not window or not older or max(older) < min(window)  # the local window is the newest chunks
        if clear and i > shot_start:  # after a cut clearing the window, earlier shots are gone (but the sink)
            assert all(c < sink or c >= shot_start for c in seen)
        if not clear and shot_sink <= 1:
            assert len(seen) == min(slots, i + 1)  # the budget is used in full
        if i < sink:
            sink_slots[i] = plan.working_slot

    _run(policy, chunks, shots, check)
    assert len(policy.slots) == slots and len(policy.cached_chunks()) == slots


def test_identity_with_the_plain_window_plan_for_plan():
    shots = _shot_starts(40, 3)
    sink, plain = SinkPolicy(num_slots=4, frames_per_chunk=FPC), SlidingWindowPolicy(4, FPC)
    for i in range(40):
        if i in shots:
            sink.start_shot(shots[i], i)
        a, b = sink.plan(i), plain.plan(i)
        assert a == b
        sink.commit(a)
        plain.commit(b)


def test_steady_state_sees_every_slot_so_reads_are_views():
    policy = SinkPolicy(num_slots=4, frames_per_chunk=FPC, sink_chunks=1, shot_sink_chunks=1)
    shots = {0: 0, 6: 1, 13: 2}

    def check(i, plan, seen, held):
        if i >= 3:
            assert plan.visible_slots == (0, 1, 2, 3)  # contiguous: BF16Storage.read returns a view

    _run(policy, 30, shots, check)


def test_shot_rope_offset():
    policy = SinkPolicy(num_slots=4, frames_per_chunk=FPC, sink_chunks=1, shot_sink_chunks=1, rope_shift_frames=8)
    shots = {0: 0, 3: 1, 4: 2, 9: 3}
    starts = []
    _run(policy, 12, shots, lambda i, plan, seen, held: starts.append(plan.rope_start_frame))
    shot_of = [max(v for c, v in shots.items() if c <= i) for i in range(12)]
    assert starts == [i * FPC + shot_of[i] * 8 for i in range(12)]
    assert starts[3] - starts[2] == FPC + 8 and starts[2] - starts[1] == FPC


@pytest.mark.parametrize("shift", [0, 5])
def test_relative_positions_are_bounded_and_ordered(shift):
    slots, fpc = 4, FPC
    policy = SinkPolicy(num_slots=slots, frames_per_chunk=fpc, sink_chunks=1, shot_sink_chunks=1,
                        rope_shift_frames=shift, relative_rope=True)
    shots = _shot_starts(200, 4)
    highest = []

    def check(i, plan, seen, held):
        frames = dict(zip(plan.visible_slots, plan.slot_rope_frames))
        assert frames[plan.working_slot] == plan.rope_start_frame == max(frames.values())
        ordered = [frames[s] for s in sorted(plan.visible_slots, key=lambda s: frames[s])]
        assert ordered[0] == 0 and all(b - a in (fpc, fpc + shift) for a, b in zip(ordered, ordered[1:]))
        highest.append(plan.rope_start_frame)

    _run(policy, 200, shots, check)
    assert max(highest) <= (slots - 1) * (fpc + shift)  # bounded however long the video


def test_no_sinks_relative_is_absolute_shifted():
    """Without sinks every chunk's relative position differs from its absolute one by one constant per plan."""
    rel = SinkPolicy(num_slots=3, frames_per_chunk=FPC, rope_shift_frames=4, relative_rope=True)
    ab = SinkPolicy(num_slots=3, frames_per_chunk=FPC, rope_shift_frames=4)
    shots = {0: 0, 2: 1, 3: 2, 7: 3}

    def shots_before(chunk):
        return max(v for c, v in shots.items() if c <= chunk)

    for i in range(12):
        if i in shots:
            rel.start_shot(shots[i], i)
            ab.start_shot(shots[i], i)
        p, q = rel.plan(i), ab.plan(i)
        chunk_in = {s: i if s == p.working_slot else rel.slots[s].chunk for s in p.visible_slots}
        absolute = {s: chunk_in[s] * FPC + shots_before(chunk_in[s]) * 4 for s in p.visible_slots}
        offsets = {absolute[s] - f for s, f in zip(p.visible_slots, p.slot_rope_frames)}
        assert len(offsets) == 1 and p.visible_slots == q.visible_slots
        assert absolute[q.working_slot] == q.rope_start_frame
        rel.commit(p)
        ab.commit(q)


def test_cut_with_clear_window_narrows_the_clean_pass_only():
    policy = SinkPolicy(num_slots=4, frames_per_chunk=FPC, sink_chunks=1, shot_sink_chunks=1,
                        clear_window_on_cut=True)
    shots = {0: 0, 6: 1}
    plans = {}
    _run(policy, 9, shots, lambda i, plan, seen, held: plans.update({i: (plan, seen, held)}))
    plan, seen, held = plans[6]
    assert seen == (0, 4, 5, 6)  # the cut chunk is denoised with the previous window ...
    cached_with = {6 if s == plan.working_slot else held[s] for s in plan.context_slots}
    assert cached_with == {0, 6}  # ... but cached without it
    assert plans[7][1] == (0, 6, 7) and plans[8][1] == (0, 6, 7, 8)
    assert plans[5][0].context_slots is None and plans[7][0].context_slots is None


def test_events_out_of_order_are_errors():
    policy = SinkPolicy(num_slots=3, frames_per_chunk=FPC, sink_chunks=1)
    with pytest.raises(LongLiveError, match="next chunk is 0"):
        policy.plan(1)
    policy.commit(policy.plan(0))
    with pytest.raises(LongLiveError, match="shots go forward"):
        policy.start_shot(1, 3)
    policy.reset()
    assert policy.plan(0).visible_slots == (0,)
