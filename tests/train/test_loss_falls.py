"""CI training smoke test: the debug DiT trained on tiny toy shards through the `train` task; the loss falls."""
from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from longlive.config import experiment_from_table
from longlive.model.convert import load_dit_weights
from longlive.model.dit import WanDiT
from longlive.model.presets import dit_preset
from longlive.run import make_run, run_task
from toy_setup import LossLog, toy_table, write_toy_shards

STEPS = 40


def test_loss_falls_and_outputs_are_written(tmp_path):
    data = write_toy_shards(tmp_path / "shards", num_clips=16, clips_per_shard=8, frames=8)
    table = toy_table(data, steps=STEPS, batch_size=4, lr=1e-3, eval_every=STEPS, save_every=20)
    run = make_run(experiment_from_table(table), run_dir=tmp_path / "run")
    losses = LossLog()
    run.pm.register(losses, name="loss-log")
    result = run_task(run)

    curve = [losses.losses[s] for s in range(1, STEPS + 1)]
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert result["losses"] == curve

    out = tmp_path / "run"
    assert json.loads((out / "result.json").read_text())["steps"] == STEPS
    assert "[train]" in (out / "experiment.toml").read_text()  # the resolved TrainConfig is recorded
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "checkpoints" / "previous.pt").is_file()
    ema = load_file(out / "model.safetensors")
    assert ema and all(torch.isfinite(v).all() for v in ema.values())
    load_dit_weights(WanDiT(dit_preset("debug")), out / "model.safetensors")  # loads strictly as a DiT
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata()["prediction"] == "velocity"  # what the head predicts travels with the weights
    logged = losses.scalars[STEPS]
    assert {"train/grad_norm", "train/lr", "train/tokens_per_s"} <= set(logged)
    assert "eval/toybench/overall/color" in logged  # evaluation ran the chunk loop and ToyBench


def test_wall_clock_budget_stops_at_a_log_step_and_still_exports(tmp_path):
    data = write_toy_shards(tmp_path / "shards", num_clips=8, clips_per_shard=8, frames=8)
    table = toy_table(data, steps=1000, batch_size=2, log_every=3, max_seconds=0.0)
    run = make_run(experiment_from_table(table), run_dir=tmp_path / "run")
    result = run_task(run)
    assert result["steps"] == 3  # the first log step after the (zero) budget
    assert (tmp_path / "run" / "model.safetensors").is_file()
