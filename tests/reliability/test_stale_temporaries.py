"""Item 9: temporaries of checkpoint saves killed midway are removed when the next run starts."""
from __future__ import annotations

from longlive.train import checkpoint as ckpt
from longlive.train.trainer import run_training
from toy_setup import make_toy_run, toy_table


def test_stale_save_temporaries_are_removed_at_start(toy_shards, tmp_path, caplog):
    directory = tmp_path / "run" / "checkpoints"
    ckpt.save_checkpoint({"step": 0, "note": "not a trainer state"}, directory / "other")  # untouched folder
    directory.mkdir(parents=True, exist_ok=True)
    stale = [directory / f".last.pt.tmp-{pid}" for pid in (111, 222, 333)]  # three saves killed with -9
    for path in stale:
        path.write_bytes(b"PK\x03\x04 half a checkpoint")
    caplog.set_level("WARNING", logger="longlive.train")
    result = run_training(make_toy_run(toy_table(toy_shards, steps=2), tmp_path / "run"))
    assert result["steps"] == 2
    assert sorted(p.name for p in directory.iterdir()) == ["last.pt", "other"]  # save_every = 0: the final one
    assert "removed 3 temporary file(s) of interrupted checkpoint saves" in caplog.text
    assert ckpt.load_checkpoint(directory)["step"] == 2  # nothing lost
    assert (directory / "other" / "last.pt").exists()
