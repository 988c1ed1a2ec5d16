"""Exact resume: an interrupted run resumed from its checkpoint retraces the uninterrupted run;
a save that fails midway leaves the previous checkpoint loadable."""
from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from longlive.train import checkpoint as ckpt
from longlive.train.trainer import run_training
from toy_setup import LossLog, make_toy_run, toy_table

STEPS, SAVE_EVERY = 8, 2


def _failing_serializer(fail_on_call: int):
    """A serializer that writes part of the file and raises on its `fail_on_call`-th call."""
    calls = {"n": 0}
    real = ckpt._serialize

    def serialize(obj, f):
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError("disk full (simulated)")
        real(obj, f)
    return serialize


def test_interrupted_save_leaves_previous_checkpoint_usable(tmp_path, monkeypatch):
    ckpt.save_checkpoint({"step": 1, "w": torch.ones(3)}, tmp_path)
    monkeypatch.setattr(ckpt, "_serialize", _failing_serializer(1))
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_checkpoint({"step": 2, "w": torch.zeros(3)}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind
    state = ckpt.load_checkpoint(tmp_path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    monkeypatch.undo()
    ckpt.save_checkpoint({"step": 3, "w": torch.full((3,), 3.0)}, tmp_path)
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:40])  # torn by a crash
    assert ckpt.load_checkpoint(tmp_path)["step"] == 1  # falls back to previous.pt
    assert ckpt.load_checkpoint(tmp_path / "empty") is None


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    import numpy as np

    state = ckpt.rng_state()
    ckpt.save_checkpoint({"step": 0, "rng": state}, tmp_path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert (np.random.rand(3) == expected[1]).all() and random.random() == expected[2]


def _train(data, run_dir, *plugins):
    table = toy_table(data, steps=STEPS, save_every=SAVE_EVERY, ema_decay=0.5, warmup_steps=3)
    return run_training(make_toy_run(table, run_dir, *plugins))


def test_resumed_run_retraces_the_uninterrupted_one(toy_shards, tmp_path, monkeypatch):
    full = LossLog()
    result = _train(toy_shards, tmp_path / "full", full)
    assert sorted(full.losses) == list(range(1, STEPS + 1))

    # 1) interrupted at a random step (fixed seed), after the checkpoint of the step before it
    stop = random.Random(0).randint(3, STEPS - 1)
    first = LossLog(stop_at=stop)
    with pytest.raises(KeyboardInterrupt):
        _train(toy_shards, tmp_path / "cut", first)
    # 2) resumed; its next save (the first after the resume) fails midway: a crash while saving
    monkeypatch.setattr(ckpt, "_serialize", _failing_serializer(1))
    second = LossLog()
    with pytest.raises(OSError, match="simulated"):
        _train(toy_shards, tmp_path / "cut", second)
    monkeypatch.undo()
    # 3) resumed again from the checkpoint the failed save left in place, and finished
    third = LossLog()
    resumed = _train(toy_shards, tmp_path / "cut", third)

    last_saved = (stop - 1) // SAVE_EVERY * SAVE_EVERY
    assert min(second.losses) == last_saved + 1 and min(third.losses) == last_saved + 1
    for part in (first, second, third):
        for step, loss in part.losses.items():
            assert loss == full.losses[step], (step, loss, full.losses[step])  # bit-identical
    assert resumed["losses"] == result["losses"] and resumed["steps"] == STEPS
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
