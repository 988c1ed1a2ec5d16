"""Training through a quantization format: an NVFP4 (fouroversix, emulated) fine-tune whose loss falls, and
LoRA over a frozen NVFP4 base with adapter-only checkpoints, EMA and export."""
from __future__ import annotations

import json

import fouroversix  # noqa: F401  (quant_4o6 needs it: a missing fouroversix fails, never skips)
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from longlive.config import experiment_from_table
from longlive.lora import LoRALinear
from longlive.model.checkpoint import save_safetensors_atomic
from longlive.model.convert import load_dit_weights
from longlive.model.dit import WanDiT
from longlive.model.presets import dit_preset
from longlive.run import make_run, run_task
from longlive.train.checkpoint import load_checkpoint
from toy_setup import LossLog, toy_table, write_toy_shards

STEPS = 40
RECIPE = {"weight_scale_rule": "static_6", "activation_scale_rule": "mse", "gradient_scale_rule": "mse"}


def _nvfp4_table(data: str, **train) -> dict:
    table = toy_table(data, **train)
    table["run"]["plugins"] = ["toyworld", "quant_4o6"]
    table["quant"] = {"generator": "fouroversix", "mode": "emulate"}
    table["plugins"]["quant_4o6"] = dict(RECIPE)
    return table


def test_nvfp4_fine_tune_loss_falls(tmp_path):
    data = write_toy_shards(tmp_path / "shards", num_clips=16, clips_per_shard=8, frames=8)
    run = make_run(experiment_from_table(_nvfp4_table(data, steps=STEPS, batch_size=4, lr=2e-3)),
                   run_dir=tmp_path / "run")
    losses = LossLog()
    run.pm.register(losses, name="loss-log")
    result = run_task(run)
    curve = [losses.losses[s] for s in range(1, STEPS + 1)]
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert all(torch.isfinite(torch.tensor(curve))) and last < 0.8 * first, (first, last)
    record = json.loads((tmp_path / "run" / "result.json").read_text())["quant"]["generator"]
    assert record["format"] == "fouroversix" and record["path"] == "emulate" and record["converted"] == 20
    load_dit_weights(WanDiT(dit_preset("debug")), tmp_path / "run" / "model.safetensors")  # master weights export


def test_lora_over_a_frozen_nvfp4_base(tmp_path):
    data = write_toy_shards(tmp_path / "shards", num_clips=8, clips_per_shard=8, frames=8)
    torch.manual_seed(0)
    start = WanDiT(dit_preset("debug"))  # Wan's init zeroes the head, which would give the adapters no gradient
    save_safetensors_atomic({k: v + 0.05 * torch.randn_like(v) for k, v in start.state_dict().items()},
                            tmp_path / "start.safetensors", metadata={"prediction": "velocity"})
    table = _nvfp4_table(data, steps=4, batch_size=2, lr=1e-2, lora_rank=4, lora_alpha=4.0, save_every=2,
                         init_from=str(tmp_path / "start.safetensors"))
    run = make_run(experiment_from_table(table), run_dir=tmp_path / "run")
    from longlive.train.trainer import Trainer

    trainer = Trainer(run, run.task_config, info=_single())
    layer = trainer.model.blocks[0].ffn[0]
    assert isinstance(layer, LoRALinear) and type(layer.base).__name__ == "NVFP4Linear"  # quantized, then wrapped
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert len(trainable) == 40 and all(".lora_" in n for n in trainable)
    assert set(trainer.ema.shadow) == set(trainable)  # EMA of the adapters only
    base = layer.base.weight.detach().clone()
    result = trainer.fit()
    assert torch.equal(layer.base.weight, base) and layer.lora_B.weight.abs().sum() > 0
    assert result["steps"] == 4 and torch.isfinite(torch.tensor(result["losses"])).all()
    state = load_checkpoint(tmp_path / "run" / "checkpoints")
    assert set(state["model"]) == set(trainable)  # adapter-only checkpoints
    export = load_file(tmp_path / "run" / "model.safetensors")
    assert set(export) == set(trainable)
    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as f:
        assert f.metadata()["lora_rank"] == "4" and f.metadata()["weights"] == "ema"
    resumed = Trainer(make_run(experiment_from_table(table), run_dir=tmp_path / "run"), run.task_config,
                      info=_single())
    resumed.resume()
    assert resumed.step == 4
    for name, p in resumed.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, dict(trainer.model.named_parameters())[name]), name


def _single():
    from longlive.distributed import DistInfo

    return DistInfo(rank=0, world_size=1, local_rank=0)
