"""Item 2: corrupt samples are skipped, counted and logged with shard and key, deterministically
(a resumed run reads what the uninterrupted one read); train.max_bad_samples turns too many into
a one-line error (exit 2)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fault_helpers import cli, member_offsets, overwrite, write_experiment
from longlive.train.trainer import run_training
from toy_setup import LossLog, make_toy_run, toy_table


def _damage(shards: str) -> tuple[str, str]:
    """Garbage over one .npy header (shard 0) and one .json (shard 1); returns the two damaged keys."""
    first, second = (shards.replace("{000000..000001}", f"00000{i}") for i in (0, 1))
    npy = sorted(n for n in member_offsets(first) if n.endswith(".npy"))[1]
    overwrite(first, member_offsets(first)[npy][0], bytes(range(64)))
    meta = sorted(n for n in member_offsets(second) if n.endswith(".json"))[2]
    overwrite(second, member_offsets(second)[meta][0], b"\xff\xfe\x00garbage")
    return npy.split(".")[0], meta.split(".")[0]


def test_corrupt_samples_are_skipped_counted_and_logged(toy_shards, tmp_path, capsys):
    bad_video, bad_meta = _damage(toy_shards)
    table = toy_table(toy_shards, steps=8)
    exp = write_experiment(tmp_path, table)
    assert cli("run", exp, "--run-dir", tmp_path / "run") == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["steps"] == 8 and len(result["bad_samples"]) == 2  # the skip-and-count record
    assert any(bad_video in m and "train-000000.tar" in m for m in result["bad_samples"])
    assert any(bad_meta in m and "train-000001.tar" in m for m in result["bad_samples"])
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("skipped corrupt sample") == 2 and "2 corrupt samples skipped" in capsys.readouterr().out

    # deterministic: interrupted at step 5 and resumed, the losses are those of the uninterrupted run
    table = toy_table(toy_shards, steps=8, save_every=2)
    full = LossLog()
    run_training(make_toy_run(table, tmp_path / "full", full))
    with pytest.raises(KeyboardInterrupt):
        run_training(make_toy_run(table, tmp_path / "cut", LossLog(stop_at=5)))
    resumed = LossLog()
    summary = run_training(make_toy_run(table, tmp_path / "cut", resumed))
    assert min(resumed.losses) == 5 and all(resumed.losses[s] == full.losses[s] for s in resumed.losses)
    assert len(summary["bad_samples"]) == 2  # the count survives the resume

    # a limit below the count: one line naming the limit, the shard and the key; exit 2
    capsys.readouterr()
    assert cli("run", exp, "--run-dir", tmp_path / "strict", "--set", "train.max_bad_samples=1") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in err[0]
    err = err[0]
    assert "the video is not a valid .npy array" in err
    assert "train.max_bad_samples: 2 corrupt samples exceed the limit of 1" in err
    assert Path(toy_shards).parent.name in err
