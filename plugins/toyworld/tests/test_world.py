"""The shapes world: determinism, captions, rendered motion, chunk continuity, cuts and motion switches."""
from __future__ import annotations

import itertools

import attrs
import numpy as np
import pytest

from longlive.errors import ConfigError
from longlive_plugins.toyworld import world as w
from longlive_plugins.toyworld.text import tokenize


def _centres(video: np.ndarray, background: str) -> np.ndarray:
    """Object centre per frame [T, 2] (x, y) in pixels, measured on the torus."""
    size = video.shape[1]
    mask = np.any(video != w.background_image(background, size)[None], axis=-1)  # [T, H, W]
    angles = 2 * np.pi * (np.arange(size) + 0.5) / size
    out = []
    for m in mask:
        ys, xs = np.nonzero(m)
        mean = [np.angle(np.exp(1j * angles[v]).mean()) % (2 * np.pi) * size / (2 * np.pi) for v in (xs, ys)]
        out.append(mean)
    return np.array(out)


def _scene(**kw) -> w.Scene:
    base = dict(shape="circle", color="red", background="black", direction="right", speed="medium",
                size="small", bounce=True)
    return w.Scene(**{**base, **kw})


def _centre_start(scene: w.Scene) -> w.MotionState:
    return w.MotionState(x=0.5, y=0.5, flip_x=1, flip_y=1, scene=scene)


def test_clip_is_deterministic_from_seed():
    a, b = w.sample_clip(7, num_shots=3, frames=24), w.sample_clip(7, num_shots=3, frames=24)
    c = w.sample_clip(8, num_shots=3, frames=24)
    assert np.array_equal(a.video, b.video) and a.shots == b.shots
    assert a.video.shape == (24, 64, 64, 3) and a.video.dtype == np.uint8
    assert not np.array_equal(a.video, c.video)


def test_caption_round_trip_over_the_whole_vocabulary():
    fields = (w.SHAPES, w.COLORS, w.BACKGROUNDS, w.DIRECTIONS, w.SPEEDS, w.SIZES, (True, False))
    captions = set()
    for shape, color, bg, direction, speed, size, bounce in itertools.product(*fields):
        scene = w.Scene(shape=shape, color=color, background=bg, direction=direction, speed=speed,
                        size=size, bounce=bounce)
        text = w.caption(scene)
        assert w.parse_caption(text) == scene
        assert len(tokenize(text)) <= 16  # fits the toy text encoder's default text_len
        captions.add(text)
    assert len(captions) == np.prod([len(f) for f in fields])  # every scene has its own caption


def test_short_captions_parse_with_defaults_and_bad_ones_fail():
    scene = w.parse_caption("A red circle moves left on a dark blue background.")
    assert scene == _scene(direction="left", background="dark blue")
    with pytest.raises(ConfigError, match="cannot read caption"):
        w.parse_caption("a red blob moves left on a dark blue background")
    with pytest.raises(ConfigError, match="color='teal'"):
        _scene(color="teal")


@pytest.mark.parametrize("bounce", [True, False])
def test_rendered_motion_follows_the_caption(bounce):
    for direction, (ux, uy) in w.DIRECTIONS.items():
        scene = _scene(direction=direction, bounce=bounce, speed="fast")
        video, _ = w.render_shot(scene, 5, start_state=_centre_start(scene))
        d = np.diff(_centres(video, scene.background), axis=0)  # [T-1, 2] px per frame
        step = w.SPEEDS["fast"] * 64 / 8
        np.testing.assert_allclose(d, np.tile([ux * step, uy * step], (4, 1)), atol=0.6)


def test_speeds_are_ordered():
    moved = {}
    for speed in w.SPEEDS:
        scene = _scene(speed=speed, bounce=False)
        video, _ = w.render_shot(scene, 9, start_state=_centre_start(scene))
        c = _centres(video, "black")
        moved[speed] = c[-1, 0] - c[0, 0]
    assert 0 < moved["slow"] < moved["medium"] < moved["fast"]


def test_bounce_reflects_at_walls_and_wrap_crosses_edges():
    scene = _scene(direction="left", speed="fast", size="large")
    video, end = w.render_shot(scene, 40, start_state=_centre_start(scene))
    mask = np.any(video != w.background_image("black", 64)[None], axis=-1)
    assert not np.any(mask[:, :, 0] & mask[:, :, -1])  # never on both sides: no wrapping
    x = _centres(video, "black")[:, 0]
    assert x[1] < x[0] and np.any(np.diff(x) > 0)  # heads left, comes back from the wall
    assert x.min() >= w.SIZES["large"] * 64 - 1 and x.max() <= 64 - w.SIZES["large"] * 64 + 1
    wrap = attrs.evolve(scene, bounce=False)
    video, _ = w.render_shot(wrap, 40, start_state=_centre_start(wrap))
    mask = np.any(video != w.background_image("black", 64)[None], axis=-1)
    assert np.any(mask[:, :, 0] & mask[:, :, -1])  # split across the left/right edge at times
    assert np.all(mask.sum((1, 2)) == mask[0].sum())  # wrapping keeps the whole shape visible


def test_chunked_rendering_equals_one_call():
    scene = _scene(direction="up-left", speed="fast", shape="triangle")
    whole, end = w.render_shot(scene, 30, rng=3)
    parts, state = [], None
    for n in (1, 7, 10, 12):
        video, state = w.render_shot(scene, n, rng=3, start_state=state)
        parts.append(video)
    assert np.array_equal(np.concatenate(parts), whole) and state == end


def test_prompt_switch_keeps_position_and_restarts_motion():
    first = _scene(direction="left", speed="fast")
    _, state = w.render_shot(first, 10, start_state=_centre_start(first))  # bounced once: flip_x = -1
    assert state.flip_x == -1
    second = attrs.evolve(first, color="blue", direction="down")
    video, _ = w.render_shot(second, 3, start_state=state)
    c = _centres(video, "black")
    assert abs(c[0, 0] - state.x * 64) < 0.6 and abs(c[0, 1] - state.y * 64) < 0.6
    assert c[1, 1] > c[0, 1] and abs(c[1, 0] - c[0, 0]) < 0.6  # moves down, as the new caption says


def test_motion_switches_keep_the_object_and_its_place():
    switches = 0
    for seed in range(8):
        clip = w.sample_clip(seed, num_shots=3, frames=30, cut_candidates=range(0, 30, 5), switch_prob=1.0)
        for prev, nxt in zip(clip.shots, clip.shots[1:]):
            assert nxt.switch and prev.scene.direction != nxt.scene.direction
            keep = ("shape", "color", "background", "size")
            assert all(getattr(prev.scene, k) == getattr(nxt.scene, k) for k in keep)
            c = _centres(clip.video[nxt.start_frame - 1: nxt.start_frame + 1], nxt.scene.background)
            step = w.SPEEDS[prev.scene.speed] / clip.fps * 64  # px per frame of the shot before
            gap = (c[1] - c[0] + 32) % 64 - 32  # on the torus
            assert np.hypot(*gap) <= step + 14, (seed, gap)  # one step, or a clamp back inside the walls
            switches += 1
    assert switches == 16


def test_no_switch_draw_without_switches():
    a = w.sample_clip(3, num_shots=3, frames=30)
    b = w.sample_clip(3, num_shots=3, frames=30, switch_prob=0.0)
    assert np.array_equal(a.video, b.video) and not any(s.switch for s in a.shots)
    with pytest.raises(ConfigError, match="switch_prob"):
        w.sample_clip(3, switch_prob=1.5)


def test_cuts_change_background_object_and_caption():
    for seed in range(8):
        clip = w.sample_clip(seed, num_shots=3, frames=30, cut_candidates=range(0, 30, 5))
        assert sum(s.num_frames for s in clip.shots) == 30 == len(clip.frame_captions())
        assert all(c % 5 == 0 for c in clip.cut_frames)
        for prev, nxt in zip(clip.shots, clip.shots[1:]):
            assert prev.scene.background != nxt.scene.background
            assert prev.scene.color != nxt.scene.color and prev.scene.shape != nxt.scene.shape
            assert prev.caption != nxt.caption
            assert np.any(clip.video[nxt.start_frame - 1] != clip.video[nxt.start_frame])
    with pytest.raises(ConfigError, match="cannot cut"):
        w.sample_clip(0, num_shots=3, frames=30, cut_candidates=[10])
