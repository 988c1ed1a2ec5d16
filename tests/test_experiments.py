"""Every experiment file in experiments/ loads and builds its plugin manager (config drift check)."""
from __future__ import annotations

from pathlib import Path

import pytest

from longlive.config import load_experiment
from longlive.run import make_run

EXPERIMENTS = sorted((Path(__file__).parents[1] / "experiments").rglob("*.toml"))


def test_there_are_experiments():
    assert len(EXPERIMENTS) >= 3


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_experiment_validates(path):
    run = make_run(load_experiment(path), create_dir=False)
    assert run.components.get("task", run.experiment.run.task, where="run.task")
