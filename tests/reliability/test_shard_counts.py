"""Item 3: shards are written atomically with a manifest of per-shard counts; training checks
the shards against it and reports a shortfall with the numbers (an error beyond
train.max_bad_samples, exit 2), instead of silently training on less data."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from fault_helpers import cli, overwrite, write_experiment
from longlive_plugins.toyworld import shards as toy_shards_module
from toy_setup import toy_table


def _headers(shard: str) -> list[int]:
    with tarfile.open(shard, "r:") as tar:
        return [m.offset for m in tar]


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("damage", ["truncated at a member boundary", "garbage over a tar header"])
def test_shortfall_against_the_manifest_is_reported(damage, toy_shards, tmp_path, capsys, caplog):
    first = toy_shards.replace("{000000..000001}", "000000")
    assert json.loads((Path(first).parent / "manifest.json").read_text())["shards"] == {
        "train-000000.tar": 4, "train-000001.tar": 4}
    last_sample = _headers(first)[-2]  # the .npy header of the last sample (members: npy, json)
    if damage.startswith("truncated"):
        os.truncate(first, last_sample)
    else:
        overwrite(first, last_sample, b"\x00garbage" * 64)
    exp = write_experiment(tmp_path, toy_table(toy_shards, steps=2, max_bad_samples=0))
    assert cli("run", exp, "--run-dir", tmp_path / "strict") == 2
    err = _error_line(capsys.readouterr().err)
    assert "train.data: 1 samples are missing from the shards" in err and "holds 3 of the 4 samples" in err
    # within the limit: the run goes on, with the numbers in the log
    caplog.set_level("WARNING")
    assert cli("run", exp, "--run-dir", tmp_path / "lenient", "--set", "train.max_bad_samples=1") == 0
    assert "train-000000.tar holds 3 of the 4 samples its manifest lists" in caplog.text


def test_interrupted_shard_writer_leaves_whole_shards_and_a_warning(tmp_path, monkeypatch, caplog, capsys):
    real, calls = toy_shards_module._write_shard, []

    def killed_on_the_third_shard(path, *args):
        calls.append(path)
        if len(calls) == 3:
            path.with_name(f".{path.name}.tmp").write_bytes(b"half a shard")
            raise KeyboardInterrupt("killed while writing a shard")
        return real(path, *args)

    monkeypatch.setattr(toy_shards_module, "_write_shard", killed_on_the_third_shard)
    directory = tmp_path / "shards"
    with pytest.raises(KeyboardInterrupt):
        toy_shards_module.write_shards(directory, 16, 4, 0, "train", 8, size=32, max_shots=2, chunk_frames=2)
    assert sorted(p.name for p in directory.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]  # whole
    assert json.loads((directory / "manifest.json").read_text())["shards"] == {}  # lists no unfinished shard
    caplog.set_level("WARNING")
    exp = write_experiment(tmp_path, toy_table(str(directory / "*.tar"), steps=2))
    assert cli("run", exp, "--run-dir", tmp_path / "run") == 0
    assert "2 of the 2 shards (8 samples)" in caplog.text and "are not listed in its manifest.json" in caplog.text
