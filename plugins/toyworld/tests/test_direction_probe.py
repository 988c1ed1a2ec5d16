"""benchmarks/toy_direction_probe.py: its direction test, and one short run with the shipped weights."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]


def _probe():
    spec = importlib.util.spec_from_file_location("toy_direction_probe", ROOT / "benchmarks" / "toy_direction_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_displacement_follows_a_direction_within_its_sector():
    follows = _probe()._follows
    assert follows(np.array([3.0, 0.2]), "right") and not follows(np.array([3.0, 0.2]), "left")
    assert follows(np.array([2.0, -2.2]), "up-right") and not follows(np.array([2.0, -2.2]), "right")
    assert not follows(np.array([0.0, 0.0]), "down")  # no motion follows nothing


def test_probe_runs_on_the_shipped_weights(capsys):
    result = _probe().main(["--checkpoint", str(ROOT / "plugins/toyworld/weights/toy_ar.safetensors"),
                            "--seeds", "1", "--frames", "8", "--steps", "2", "--directions", "left", "down-right"])
    assert result["clips"] == 2 and 0 <= result["follow_caption"] <= 2 and 0 <= result["follow_switch"] <= 2
    assert len(result["spread_px"]) == 1 and math.isfinite(result["spread_px"][0]) and result["spread_px"][0] >= 0
    out = capsys.readouterr().out
    assert out.count("seed 0 ") == 2 and "seed 0 down-right" in out and "first-chunk spread" in out
