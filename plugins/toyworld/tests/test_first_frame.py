"""The I2V "first frame kept" score: colour, shape and position of opening frames against the
conditioning image's object and its ground-truth path."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from longlive.config import experiment_from_table
from longlive.errors import ConfigError
from longlive.run import make_run, run_task
from longlive_plugins.toyworld.first_frame import mean_and_stderr, score_first_frame, torus_distance
from longlive_plugins.toyworld.world import MotionState, Scene, background_image, parse_caption, render_shot

SCENE = parse_caption("a large red square moves right slowly and bounces on a black background")


def _shot(scene: Scene, x: float, y: float, frames: int = 9) -> np.ndarray:
    start = MotionState(x=x, y=y, flip_x=1, flip_y=1, scene=scene)
    return render_shot(scene, frames, size=64, fps=8.0, start_state=start)[0]  # uint8 [T, H, W, 3]


def test_the_ground_truth_keeps_everything_in_both_layouts():
    truth = _shot(SCENE, 0.3, 0.5)
    as_float = torch.from_numpy(truth).permute(3, 0, 1, 2).float().div(127.5).sub(1)  # [3, T, H, W]
    for generated in (truth, as_float):
        s = score_first_frame(generated, truth, frames=8)
        assert (s.color_kept, s.shape_kept, s.position_kept, s.all_kept) == (1.0, 1.0, 1.0, 1.0)
        assert s.position_error_px < 0.5 and s.frames == 8


def test_a_moved_object_keeps_colour_and_shape_but_not_position():
    truth = _shot(SCENE, 0.3, 0.5)
    moved = _shot(SCENE, 0.3, 0.8)  # 19 px lower
    s = score_first_frame(moved, truth, frames=8)
    assert (s.color_kept, s.shape_kept, s.position_kept) == (1.0, 1.0, 0.0)
    assert s.position_error_px == pytest.approx(0.3 * 64, abs=1.0)
    near = _shot(SCENE, 0.3 + 2 / 64, 0.5)  # 2 px off: within the 4-px tolerance
    assert score_first_frame(near, truth, frames=8).position_kept == 1.0


def test_another_colour_or_shape_or_no_object_is_not_kept():
    truth = _shot(SCENE, 0.3, 0.5)
    blue = _shot(parse_caption("a large blue square moves right slowly and bounces on a black background"), 0.3, 0.5)
    circle = _shot(parse_caption("a large red circle moves right slowly and bounces on a black background"), 0.3, 0.5)
    s = score_first_frame(blue, truth, frames=8)
    assert (s.color_kept, s.shape_kept, s.position_kept, s.all_kept) == (0.0, 1.0, 1.0, 0.0)
    s = score_first_frame(circle, truth, frames=8)
    assert (s.color_kept, s.shape_kept, s.position_kept, s.all_kept) == (1.0, 0.0, 1.0, 0.0)
    lost = truth.copy()
    lost[4:] = background_image("black", 64)  # the object vanishes from frame 4 on
    s = score_first_frame(lost, truth, frames=8)
    assert s.all_kept == pytest.approx(3 / 8) and s.position_error_px < 0.5  # error over frames with an object
    empty = np.broadcast_to(background_image("black", 64), truth.shape).copy()
    s = score_first_frame(empty, truth, frames=8)
    assert (s.color_kept, s.all_kept, s.position_error_px) == (0.0, 0.0, None)


def test_frame_zero_is_not_scored_and_lengths_are_checked():
    truth = _shot(SCENE, 0.3, 0.5)
    other = _shot(SCENE, 0.3, 0.8)
    other[0] = truth[0]  # generation writes the image into frame 0
    assert score_first_frame(other, truth, frames=8).position_kept == 0.0
    with pytest.raises(ConfigError, match="eval_i2v_frames"):
        score_first_frame(truth, truth, frames=9)


def test_torus_distance_wraps_around_edges():
    d = torus_distance(np.array([[1.0, 10.0], [5.0, 5.0]]), np.array([[63.0, 10.0], [8.0, 9.0]]), (64, 64))
    assert d == pytest.approx([2.0, 5.0])


def test_mean_and_stderr():
    mean, err = mean_and_stderr([1.0, 0.0, None, 1.0, 0.0])
    assert mean == 0.5 and err == pytest.approx(np.std([1, 0, 1, 0], ddof=1) / 2)
    assert all(math.isnan(v) for v in mean_and_stderr([None]))


def _table(**toyworld) -> dict:
    return {
        "run": {"name": "eval", "task": "toy_eval", "device": "cpu", "plugins": ["toyworld"]},
        "model": {"preset": "toy", "codec": "toy-patch", "text_encoder": "toy-words"},
        "sampler": {"steps": 1, "height": 32, "width": 32, "num_frames": 8, "frames_per_chunk": 4,
                    "window_frames": 8},
        "plugins": {"toyworld": {"size": 32, "eval_clips": 2, "model_dim": 64, "model_layers": 1, **toyworld}},
    }


def test_i2v_clips_start_with_their_own_first_frame():
    """The toy_eval I2V path: the clip's ground-truth frame 0, encoded alone, comes back as frame 0
    of the generated video (a random model; the lossless codec)."""
    from longlive.assembly import build_parts, render
    from longlive.prompts import chunk_prompts
    from longlive_plugins.toyworld.heldout import _image_latent, heldout_clip

    run = make_run(experiment_from_table(_table()), create_dir=False)
    parts = build_parts(run)
    clip, script = heldout_clip(7, latent_frames=8, frames_per_chunk=4, stride=1, shots=1, size=32, fps=8.0)
    schedule = chunk_prompts(script, num_frames=8, frames_per_chunk=4)
    video = render(run, parts, schedule, image_latent=_image_latent(clip.video[0], parts.codec, run),
                   show_progress=False, keep_video=True).video  # [1, 3, T, H, W] in [-1, 1]
    frame0 = ((video[0, :, 0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(frame0, clip.video[0])
    plain = render(run, parts, schedule, show_progress=False, keep_video=True).video
    assert not torch.equal(plain[0, :, 0], video[0, :, 0])


def test_toy_eval_i2v_writes_first_frame_scores(tmp_path):
    result = run_task(make_run(experiment_from_table(_table(eval_i2v=True, eval_i2v_frames=3)), run_dir=tmp_path))
    saved = json.loads((tmp_path / "toy_eval.json").read_text())
    assert saved["i2v"] is True and saved["first_frame"]["frames"] == 3 and len(saved["per_clip"]) == 2
    assert set(saved["first_frame"]["mean"]) == {"color_kept", "shape_kept", "position_kept", "all_kept",
                                                 "position_error_px"}
    assert all(0.0 <= c["first_frame"]["all_kept"] <= 1.0 for c in saved["per_clip"])
    assert set(saved["stderr"]) == set(saved["mean"])
    assert "first frame kept" in result["summary"]
    with pytest.raises(ConfigError, match="eval_i2v_frames"):
        run_task(make_run(experiment_from_table(_table(eval_i2v=True, eval_i2v_frames=8)), run_dir=tmp_path / "x"))
