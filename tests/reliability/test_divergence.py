"""Item 1: a checkpoint is written only from finite weights, optimizer state and EMA; divergence
stops the run with the last good checkpoint intact, and a resume starts from it."""
from __future__ import annotations

import math

import pytest
import torch

from longlive.errors import ConfigError, LongLiveError
from longlive.registry import hookimpl
from longlive.train import checkpoint as ckpt
from longlive.train.objective import FlowMatchingObjective
from longlive.train.trainer import run_training
from toy_setup import make_toy_run, toy_table


class PoisonedObjective:
    """The core objective, whose loss turns NaN from the `from_call`-th call on (a diverging run)."""

    def __init__(self, from_call: int) -> None:
        self.from_call, self.calls = from_call, 0

    @hookimpl
    def longlive_make_objective(self, run):
        real = FlowMatchingObjective.from_run(run)

        def objective(model, batch, generator):
            self.calls += 1
            loss, metrics = real(model, batch, generator)
            return (loss * math.nan if self.calls >= self.from_call else loss), metrics
        return objective


def test_divergence_keeps_the_last_good_checkpoint(toy_shards, tmp_path, caplog):
    # log_every > save_every: the loss check alone would not see the NaN before saving (the reported case)
    table = toy_table(toy_shards, steps=8, save_every=2, log_every=20)
    with pytest.raises(LongLiveError) as info:  # not a ConfigError: the CLI exits 1
        run_training(make_toy_run(table, tmp_path / "run", PoisonedObjective(from_call=5)))
    assert not isinstance(info.value, ConfigError)
    message = str(info.value)
    assert "\n" not in message and "diverged by step 6" in message and "last good checkpoint (step 4)" in message
    directory = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in directory.iterdir()) == ["last.pt", "previous.pt"]
    for name, step in (("last.pt", 4), ("previous.pt", 2)):
        state = torch.load(directory / name, weights_only=True)
        assert state["step"] == step and ckpt.nonfinite_tensors(state) == []
    assert not (tmp_path / "run" / "model.safetensors").exists()  # no NaN export either
    # the resume starts from the last good checkpoint and finishes
    caplog.set_level("INFO", logger="longlive.train")
    result = run_training(make_toy_run(table, tmp_path / "run"))
    assert "resumed at step 4" in caplog.text
    assert result["steps"] == 8 and math.isfinite(result["loss"])


def test_save_refuses_and_load_skips_nonfinite_states(tmp_path):
    ckpt.save_checkpoint({"step": 1, "w": torch.ones(3)}, tmp_path)
    with pytest.raises(ckpt.NonFiniteStateError, match=r"1 tensors hold NaN or inf \(e\.g\. optimizer\.m\)"):
        ckpt.save_checkpoint({"step": 2, "optimizer": {"m": torch.tensor([1.0, math.inf])}}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    # a NaN last.pt written by an older version: the loader falls back to previous.pt (step 1)
    ckpt.save_checkpoint({"step": 3, "w": torch.ones(3)}, tmp_path)
    torch.save({"format_version": ckpt.FORMAT_VERSION, "step": 4, "w": torch.full((3,), math.nan)},
               tmp_path / "last.pt")
    assert ckpt.load_checkpoint(tmp_path)["step"] == 1
