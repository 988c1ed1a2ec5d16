"""Every experiment file in experiments/ loads and builds its plugin manager (config drift check)."""
from __future__ import annotations

from pathlib import Path

import pytest

from longlive.config import load_experiment
from longlive.run import make_run

ROOT = Path(__file__).parents[1] / "experiments"
EXPERIMENTS = sorted(p for p in ROOT.rglob("*.toml") if p.parent != ROOT / "sweeps")  # sweeps: tests/test_sweep.py


def test_there_are_experiments():
    assert len(EXPERIMENTS) >= 3


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_experiment_validates(path):
    run = make_run(load_experiment(path), create_dir=False)
    assert run.components.get("task", run.experiment.run.task, where="run.task")
