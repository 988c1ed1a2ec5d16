"""Shared fixtures: a fresh plugin manager, a CPU RunContext and the tiny `debug` DiT."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "tests" / "support"))  # ad-hoc test plugins, shared tables

from debug_experiment import DEBUG_EXPERIMENT  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def pm():
    from longlive.registry.manager import new_plugin_manager

    return new_plugin_manager()


@pytest.fixture
def run(tmp_path):
    """A CPU RunContext of the debug experiment, writing into tmp_path."""
    from longlive.config import experiment_from_table
    from longlive.run import make_run

    return make_run(experiment_from_table(DEBUG_EXPERIMENT), run_dir=tmp_path / "run")


@pytest.fixture
def tiny_model():
    from longlive.model.dit import WanDiT
    from longlive.model.presets import dit_preset

    torch.manual_seed(0)
    model = WanDiT(dit_preset("debug")).eval()
    with torch.no_grad():  # Wan's init zeroes the head: perturb everything so outputs carry signal
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model
