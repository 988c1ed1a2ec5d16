"""benchmarks/toy_recipe_tables.py: means with standard errors, paired per-clip differences, drift."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _tables():
    spec = importlib.util.spec_from_file_location("toy_recipe_tables", ROOT / "benchmarks" / "toy_recipe_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eval(motion: list[float]) -> dict:
    clips = [{"color": 1.0, "shape": 1.0, "motion": m, "persistence": 1.0, "background": 1.0} for m in motion]
    return {"clips": len(clips), "per_clip": clips}


def test_stats_are_mean_and_standard_error_of_finite_values():
    mean, err, n = _tables()._stats([1.0, 0.0, None, float("nan"), 1.0, 0.0])
    assert (mean, n) == (0.5, 4) and math.isclose(err, math.sqrt((4 * 0.25 / 3) / 4))


def test_paired_differences_cancel_the_clip_spread():
    t = _tables()
    ref = _eval([0.0, 1.0, 0.0, 1.0])
    shifted = _eval([0.1, 1.0, 0.1, 1.0, 0.5])  # one more clip than the reference: compared on 4
    text = t.eval_tables([("ref", ref), ("new", shifted)], "ref")
    rows = [line for line in text.splitlines() if line.startswith("| new |")]
    assert "| 0.540 ± 0.201 |" in rows[0]  # unpaired: the mean of 5 clips, a wide error
    assert rows[1].startswith("| new | 4 | 0.000 ± 0.000 | 0.000 ± 0.000 | 0.050 ± 0.029 |")


def test_drift_compares_the_first_and_last_thirds():
    seg = [{"color": 1.0, "shape": 1.0, "motion": m, "persistence": 1.0, "background": 1.0}
           for m in (1.0, 1.0, 0.5, 0.5, 0.0, 0.0)]
    text = _tables().drift_table([("m", {"segments": seg})])
    motion = [line for line in text.splitlines() if line.startswith("| m motion |")][0]
    assert motion.endswith("| 1.000 | 0.000 | +1.000 |")
