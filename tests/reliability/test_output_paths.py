"""Item 4: names are names and output paths stay where they are documented to go: run.name and
train.export are plain names, run.output_dir is a folder below the working directory or an
absolute path. Item 7: two runs started at once never share a run directory."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from fault_helpers import BASE, TRAIN, cli, write_experiment
from longlive.config import experiment_from_table
from longlive.run import _new_run_dir


@pytest.mark.parametrize("table, override, key", [
    (BASE, 'run.name="/"', "run.name"),
    (BASE, 'run.name="../escape"', "run.name"),
    (BASE, 'run.name=".."', "run.name"),
    (BASE, 'run.name=""', "run.name"),
    (BASE, 'run.output_dir="../elsewhere"', "run.output_dir"),
    (BASE, 'run.output_dir="runs/../../x"', "run.output_dir"),
    (TRAIN, 'train.export="../model.safetensors"', "train.export"),
    (TRAIN, 'train.export="/tmp/model.safetensors"', "train.export"),
])
def test_names_and_output_paths_are_checked(table, override, key, tmp_path, capsys, monkeypatch):
    (tmp_path / "shards").mkdir()
    monkeypatch.chdir(tmp_path)
    exp = write_experiment(tmp_path / "exp", table)
    assert cli("validate", exp) == 0
    capsys.readouterr()
    assert cli("run", exp, "--set", override) == 2  # refused before anything is written
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and "Traceback" not in err[0]
    assert sorted(os.listdir(tmp_path)) == ["exp", "shards"]  # nothing was written anywhere


def test_absolute_output_dir_is_allowed_and_resolved_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp = experiment_from_table({**BASE, "run": {**BASE["run"], "output_dir": str(tmp_path / "abs")}})
    assert _new_run_dir(exp).parent == tmp_path / "abs" / "v"
    exp = experiment_from_table({**BASE, "run": {**BASE["run"], "output_dir": "./rel/runs"}})
    path = _new_run_dir(exp)
    assert path.is_absolute() and path.parent == tmp_path / "rel" / "runs" / "v"


def test_concurrent_runs_get_distinct_directories(tmp_path):
    exp = experiment_from_table({**BASE, "run": {**BASE["run"], "output_dir": str(tmp_path)}})
    with ThreadPoolExecutor(16) as pool:
        dirs = list(pool.map(lambda _: _new_run_dir(exp), range(64)))
    assert len(set(dirs)) == 64 and all(d.is_dir() for d in dirs)  # each one created by exactly one caller
    assert len(os.listdir(tmp_path / "v")) == 64
