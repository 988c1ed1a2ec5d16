"""The core's device mesh and sequence layout in one process (multi-process runs: plugins/sp_balanced/tests)."""
from __future__ import annotations

import json

import pytest
import torch

from debug_experiment import DEBUG_EXPERIMENT
from longlive.config import experiment_from_table
from longlive.errors import ConfigError
from longlive.layout import SingleDeviceLayout
from longlive.parallel import ParallelMesh
from longlive.run import make_run, run_task


def _table(**parallel) -> dict:
    return {**{k: dict(v) for k, v in DEBUG_EXPERIMENT.items()}, "parallel": parallel}


def test_mesh_ranks():
    mesh = ParallelMesh(world=8, rank=5, sp=4)
    assert (mesh.dp, mesh.dp_rank, mesh.sp_rank, mesh.is_writer) == (2, 1, 1, False)
    assert ParallelMesh(world=8, rank=0, sp=2).is_writer
    with pytest.raises(ValueError, match="sp=3 must divide world=8"):
        ParallelMesh(world=8, sp=3)


def test_one_process_runs_on_the_single_device_mesh_and_records_it(tmp_path):
    run = make_run(experiment_from_table(_table()), run_dir=tmp_path / "run")
    assert run.mesh == ParallelMesh() and isinstance(run.layout, SingleDeviceLayout)
    run_task(run)
    versions = json.loads((tmp_path / "run" / "versions.json").read_text())
    assert versions["parallel"] == {"world": 1, "dp": 1, "sp": 1, "backend": "none",
                                    "layout": {"name": "single_device", "sp": 1}}
    assert "[parallel]\nsp = 1" in (tmp_path / "run" / "experiment.toml").read_text()


def test_sp_without_a_layout_plugin_is_refused():
    with pytest.raises(ConfigError, match=r'^parallel.sp=2 needs a sequence-layout plugin .*add "sp_balanced"'):
        make_run(experiment_from_table(_table(sp=2)), create_dir=False)


def test_generate_refuses_data_parallel_groups():
    from longlive.generate import generate_video

    run = make_run(experiment_from_table(_table()), create_dir=False)
    run.mesh = ParallelMesh(world=4, rank=0, sp=2)  # as torchrun with 4 processes and parallel.sp = 2 would give
    with pytest.raises(ConfigError, match=r"^generate renders one video per launch, but 4 processes .* 2 "
                                          r"data-parallel groups"):
        generate_video(run)


def test_single_device_layout_is_the_identity():
    layout = SingleDeviceLayout()
    x = torch.randn(2, 6, 4, 8)
    assert layout.scatter(x) is x and layout.gather(x) is x and layout.heads_to_seq(x) is x
    assert all(a is b for a, b in zip(layout.exchange_qkv(x, x, x), (x, x, x)))
    assert layout.local_heads(24) == 24 and layout.take_traffic()["bytes_sent"] == 0
