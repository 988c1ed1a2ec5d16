"""ToyBench on rendered ground truth, on wrong captions, on noise, and around prompt switches."""
from __future__ import annotations

import json

import attrs
import numpy as np
import pytest
import torch

from longlive.errors import ConfigError
from longlive_plugins.toyworld import toybench as tb
from longlive_plugins.toyworld import world as w


def _blur_and_noise(video: np.ndarray, seed: int, sigma: float = 15.0) -> np.ndarray:
    """A crude 'generated' look: two [1, 2, 1] blurs per axis and Gaussian pixel noise."""
    out = video.astype(np.float32)
    for _ in range(2):
        for axis in (1, 2):
            out = (np.roll(out, 1, axis) + 2 * out + np.roll(out, -1, axis)) / 4
    out += np.random.default_rng(seed).normal(0, sigma, out.shape)
    return out.clip(0, 255).astype(np.uint8)


def _from_centre(scene: w.Scene, frames: int) -> np.ndarray:
    state = w.MotionState(x=0.5, y=0.5, flip_x=1, flip_y=1, scene=scene)
    return w.render_shot(scene, frames, start_state=state)[0]


@pytest.mark.parametrize("size,fps,seeds", [(64, 8.0, range(6)), (128, 16.0, range(2))])
def test_ground_truth_scores_high(size, fps, seeds):
    for seed in seeds:
        clip = w.sample_clip(seed, num_shots=3, frames=int(12 * fps), size=size, fps=fps)
        res = tb.score_video(clip.video, fps=fps, schedule=clip.prompt_schedule())
        for m in tb.METRICS:
            assert getattr(res.overall, m) >= 0.95, (seed, m, res.format_table())
        assert len(res.segments) == 2 and len(res.spans) == 3  # 12 s in 10 s segments; 3 shots
        assert all(s.frames_to_match == 0 for s in res.switches)


def test_blurred_noisy_ground_truth_still_scores_high():
    clip = w.sample_clip(5, num_shots=2, frames=64)
    res = tb.score_video(_blur_and_noise(clip.video, 5), fps=8.0, schedule=clip.prompt_schedule())
    assert min(getattr(res.overall, m) for m in tb.METRICS) >= 0.9, res.format_table()


def test_wrong_colour_shape_background_score_low():
    for seed in range(4):
        clip = w.sample_clip(seed, num_shots=1, frames=32)
        scene = clip.shots[0].scene
        wrong = {"color": [c for c in w.COLORS if c != scene.color][seed],
                 "shape": [s for s in w.SHAPES if s != scene.shape][seed % 2],
                 "background": [b for b in w.BACKGROUNDS if b != scene.background][seed]}
        for field, value in wrong.items():
            res = tb.score_video(clip.video, fps=8.0, schedule=[(0, w.caption(attrs.evolve(scene, **{field: value})))])
            assert getattr(res.overall, field) < 0.3, (seed, field)
            assert res.overall.persistence >= 0.95  # only the wrong field scores low


@pytest.mark.parametrize("bounce", [False, True])
def test_wrong_direction_scores_low(bounce):
    # Bouncing objects turn around at walls, so keep those clips short: no bounce happens.
    frames = 48 if not bounce else 12
    for direction, opposite in [("left", "right"), ("up-left", "down-right"), ("down", "up"), ("up-right", "up-left")]:
        scene = w.Scene(shape="square", color="yellow", background="dark blue", direction=direction,
                        speed="medium", size="small", bounce=bounce)
        video = _from_centre(scene, frames)
        right = tb.score_video(video, fps=8.0, schedule=[(0, w.caption(scene))])
        wrong = tb.score_video(video, fps=8.0, schedule=[(0, w.caption(attrs.evolve(scene, direction=opposite)))])
        assert right.overall.motion >= 0.95 and wrong.overall.motion < 0.3, direction


def test_bouncing_motion_is_followed_through_reflections():
    scene = w.Scene(shape="triangle", color="green", background="checkered plum", direction="up-left",
                    speed="fast", size="large", bounce=True)
    video = _from_centre(scene, 80)  # many bounces
    res = tb.score_video(video, fps=8.0, schedule=[(0, w.caption(scene))])
    assert res.overall.motion >= 0.95
    still = np.repeat(video[:1], 80, axis=0)  # the object does not move at all
    assert tb.score_video(still, fps=8.0, schedule=[(0, w.caption(scene))]).overall.motion == 0.0


def test_noise_has_no_persistent_object():
    noise = np.random.default_rng(0).integers(0, 256, (24, 64, 64, 3), dtype=np.uint8)
    res = tb.score_video(noise, fps=8.0, schedule=[(0, "a small red circle moves left on a gray background")])
    assert res.overall.persistence < 0.3 and res.overall.background < 0.3
    empty = np.broadcast_to(w.background_image("gray", 64), (24, 64, 64, 3)).copy()
    res = tb.score_video(empty, fps=8.0, schedule=[(0, "a small red circle moves left on a gray background")])
    assert res.overall.persistence == 0.0 and res.overall.background == 1.0


def test_responsiveness_counts_frames_until_the_new_caption_holds():
    clip = w.sample_clip(2, num_shots=2, frames=40, cut_candidates=[20])
    old, new = clip.shots
    schedule = clip.prompt_schedule()
    assert tb.score_video(clip.video, fps=8.0, schedule=schedule).switches[0].frames_to_match == 0
    lagged = clip.video.copy()
    lagged[20:25] = w.render_shot(old.scene, 25, rng=0)[0][20:]  # the old scene lingers 5 frames
    res = tb.score_video(lagged, fps=8.0, schedule=schedule)
    assert res.switches[0].frames_to_match == 5 and res.responsiveness_frames == 5.0
    never = np.concatenate([clip.video[:20], w.render_shot(old.scene, 20, rng=1)[0]])
    res = tb.score_video(never, fps=8.0, schedule=schedule)
    assert res.switches[0].frames_to_match is None and res.responded == 0.0


def test_prompt_switch_inside_a_shot():
    first = w.Scene(shape="circle", color="red", background="gray", direction="right", speed="slow")
    second = attrs.evolve(first, color="cyan", direction="down")
    a, state = w.render_shot(first, 24, rng=4)
    b, _ = w.render_shot(second, 24, start_state=state)
    schedule = [(0, w.caption(first)), (24, w.caption(second))]
    res = tb.score_video(np.concatenate([a, b]), fps=8.0, schedule=schedule)
    assert res.switches[0].frames_to_match == 0
    assert all(s.motion >= 0.95 and s.color == 1.0 for s in res.spans)


def test_inputs_layouts_and_outputs(tmp_path):
    clip = w.sample_clip(1, num_shots=2, frames=24)
    as_float = torch.from_numpy(clip.video).permute(3, 0, 1, 2).float() / 127.5 - 1  # [3, T, H, W]
    a = tb.score_video(clip.video, fps=8.0, schedule=clip.prompt_schedule(), segment_s=1.0)
    b = tb.score_video(as_float, fps=8.0, schedule=clip.frame_captions(), segment_s=1.0)
    assert a.to_dict() == b.to_dict() and len(a.segments) == 3
    d = json.loads(json.dumps(a.to_dict()))
    assert d["overall"]["color"] == 1.0 and len(d["switches"]) == 1
    table = a.format_table()
    assert "overall" in table and clip.shots[1].caption in table
    path = tb.plot(a, tmp_path / "plots" / "toybench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="must begin at 0"):
        tb.score_video(clip.video, fps=8.0, schedule=[(3, clip.shots[0].caption)])
    with pytest.raises(ConfigError, match="per-frame captions"):
        tb.score_video(clip.video, fps=8.0, schedule=clip.frame_captions()[:-1])
    with pytest.raises(ConfigError, match="uint8"):
        tb.score_video(clip.video.astype(np.float32), fps=8.0, schedule=clip.prompt_schedule())
