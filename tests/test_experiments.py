"""Every experiment file in experiments/ loads and builds its plugin manager (config drift check)."""
from __future__ import annotations

from pathlib import Path

import pytest

from longlive.config import load_experiment
from longlive.errors import ConfigError
from longlive.run import check_experiment

ROOT = Path(__file__).parents[1] / "experiments"
EXPERIMENTS = sorted(p for p in ROOT.rglob("*.toml") if p.parent != ROOT / "sweeps")  # sweeps: tests/test_sweep.py


def test_there_are_experiments():
    assert len(EXPERIMENTS) >= 3


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_experiment_validates(path, tmp_path):
    overrides = []
    if load_experiment(path).model.text_encoder == "umt5-xxl":  # real-model files: the user gives local paths
        overrides.append(f'model.text_encoder_path="{tmp_path}"')
    checked = check_experiment(load_experiment(path, overrides))
    assert checked.components.get("task", checked.experiment.run.task, where="run.task")


def test_real_model_experiment_names_the_missing_text_encoder_path():
    with pytest.raises(ConfigError, match="^model.text_encoder_path: the umt5-xxl text encoder needs a local directory"):
        check_experiment(load_experiment(Path(__file__).parents[1] / "experiments" / "t2v_bf16.toml"))


def test_the_readme_shows_the_shipped_experiment():
    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    shipped = (root / "experiments" / "t2v_bf16.toml").read_text(encoding="utf-8")
    assert f"```toml\n{shipped.rstrip()}\n```" in readme
