"""benchmarks/toy_caption_sensitivity.py: its clips, and one short run with the shipped weights."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]


def _script():
    spec = importlib.util.spec_from_file_location("toy_caption_sensitivity",
                                                  ROOT / "benchmarks" / "toy_caption_sensitivity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_switch_clip_keeps_the_object_and_changes_its_motion():
    module = _script()
    video, scenes, target, state = module._clip("switch", "right", "up", np.random.default_rng(0))
    assert video.shape[0] == 16 and target == 2 and state.scene.direction == "up"
    assert [s.direction for s in scenes] == ["up", "up", "right", "right"]
    red = (video == np.array([225, 35, 35], dtype=np.uint8)).all(-1)  # [T, H, W]
    xs = [np.nonzero(red[t].any(0))[0].mean() for t in (7, 8, 15)]
    ys = [np.nonzero(red[t].any(1))[0].mean() for t in (0, 7)]
    assert ys[1] < ys[0]  # moving up before the switch
    assert abs(xs[1] - xs[0]) < 3 and xs[2] > xs[1] + 8  # same place at the switch, then right
    ways = module._eight_ways(state)  # [3, 4, H, W]: the object spread over 8 directions
    assert ways.shape == (3, 4, 64, 64) and ways.min() >= -1 and ways.max() <= 1
    assert torch.allclose(ways[:, 0], module.video_to_float(video[8:9])[:, 0], atol=1e-6)  # first frame: one place


def test_every_direction_has_its_opposite():
    module = _script()
    assert all(module.OPPOSITE[module.OPPOSITE[d]] == d and module.OPPOSITE[d] != d for d in module.OPPOSITE)


def test_runs_on_the_shipped_weights(capsys):
    table = _script().main(["--checkpoint", str(ROOT / "plugins/toyworld/weights/toy_ar.safetensors"),
                            "--clips", "1", "--sigmas", "0.9", "--cases", "switch"])
    (key, errors), = table.items()
    assert key == ("switch", 0.9)
    assert set(errors) == {"true", "opposite", "8 ways"}
    assert all(math.isfinite(v) and 0 <= v < 4 for v in errors.values())
    assert "switch   sigma 0.90" in capsys.readouterr().out
