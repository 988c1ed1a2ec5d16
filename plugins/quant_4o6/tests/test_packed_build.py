"""`[model] checkpoint` takes packed NVFP4 weights: ours (safetensors) and LongLive's `model_4o6.pt`.

The core converts the linears the checkpoint stores packed before the load (longlive/quant/packed.py);
the toy W4A4 experiment then generates from the file exactly what it generates from the BF16 weights
quantized at startup.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from longlive.assembly import build_model
from longlive.config import load_experiment
from longlive.errors import ConfigError
from longlive.model.checkpoint import read_state_dict
from longlive.quant.format import quantized_modules
from longlive.run import make_run
from longlive_plugins.quant_4o6.checkpoint import save_packed_checkpoint
from longlive_plugins.quant_4o6.tests.test_checkpoint import _longlive_materialized

EXPERIMENT = Path(__file__).parents[3] / "experiments" / "toy" / "generate_w4a4.toml"
BF16 = Path(__file__).parents[3] / "plugins" / "toyworld" / "weights" / "toy_ar.safetensors"


def _run(*sets: str):
    return make_run(load_experiment(EXPERIMENT, ['run.device="cpu"', *sets]), create_dir=False)


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 48, 1, 16, 16, generator=g), torch.tensor([700.0]), torch.randn(1, 16, 64, generator=g)


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x, t, ctx = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(a(x, t, ctx), b(x, t, ctx), rtol=0, atol=0)


def test_our_packed_file_builds_the_same_model_as_quantizing_at_startup(tmp_path):
    run = _run()
    reference = build_model(run)
    assert run.quant["generator"]["converted"] == 60 and not run.quant["generator"]["from_checkpoint"]
    save_packed_checkpoint(reference, tmp_path / "packed.safetensors")
    packed_run = _run(f'model.checkpoint="{tmp_path / "packed.safetensors"}"')
    loaded = build_model(packed_run)
    record = packed_run.quant["generator"]
    assert record["from_checkpoint"] and record["converted"] == 60 and record["path"] == "emulate"
    assert record["packed_bytes"] == run.quant["generator"]["packed_bytes"]
    _same_outputs(loaded, reference)


def test_longlive_model_4o6_pt_builds_through_model_checkpoint(tmp_path):
    run = _run('plugins.quant_4o6.weight_scale_rule="mse"')  # what _longlive_materialized writes
    reference = build_model(run)
    bf16 = build_model(_run('quant.generator="none"'))
    torch.save({"generator": _longlive_materialized(bf16, metadata_len=4)}, tmp_path / "model_4o6.pt")
    packed_run = _run('plugins.quant_4o6.weight_scale_rule="mse"', f'model.checkpoint="{tmp_path / "model_4o6.pt"}"')
    loaded = build_model(packed_run)
    assert len(quantized_modules(loaded)) == 60 and packed_run.quant["generator"]["from_checkpoint"]
    _same_outputs(loaded, reference)


def test_packed_checkpoint_errors_name_the_fix(tmp_path):
    path = tmp_path / "packed.safetensors"
    save_packed_checkpoint(build_model(_run()), path)
    with pytest.raises(ConfigError, match=r'stores 60 linears packed .* set quant.generator to the format'):
        build_model(_run(f'model.checkpoint="{path}"', 'quant.generator="none"', 'run.plugins=["toyworld"]'))
    with pytest.raises(ConfigError, match="no master weights to train; start training from the BF16 weights"):
        build_model(_run(f'model.checkpoint="{path}"'), training=True)
    state = dict(read_state_dict(path))
    state["blocks.0.ffn.0.quantized_weight_values"] = state["blocks.0.ffn.0.quantized_weight_values"][:8]
    from safetensors.torch import save_file
    save_file(state, str(tmp_path / "cut.safetensors"))
    with pytest.raises(ConfigError, match=r"quant_4o6: packed quantized_weight_values is \(8, "):
        build_model(_run(f'model.checkpoint="{tmp_path / "cut.safetensors"}"'))
    assert BF16.exists()
