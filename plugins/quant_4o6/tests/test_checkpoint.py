"""Packed checkpoints: LongLive's materialized `model_4o6.pt` loads; our packed safetensors round-trip."""
from __future__ import annotations

import copy

import pytest
import torch
from fouroversix import FourOverSixLinear, ModelQuantizationConfig
from torch import nn

from longlive.errors import ConfigError
from longlive.quant.apply import quantize_model
from longlive.quant.format import quantized_modules
from longlive_plugins.quant_4o6.checkpoint import is_packed_state, load_packed_checkpoint, save_packed_checkpoint
from longlive_plugins.quant_4o6.format import FourOverSixFormat
from longlive_plugins.quant_4o6.plugin import Quant4o6Config

INPUTS = (torch.randn(1, 48, 2, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500.0]),
          torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(1)))


def _longlive_materialized(model: nn.Module, *, metadata_len: int) -> dict[str, torch.Tensor]:
    """What LongLive writes: fouroversix's own FourOverSixLinear.get_quantized_parameters per block linear
    (the weight replaced by quantized_weight_* buffers), under the wrapper's `model.` prefix."""
    config = ModelQuantizationConfig(scale_rule="mse")
    state = {}
    for name, tensor in model.state_dict().items():
        state[f"model.{name}"] = tensor
    for name, module in model.named_modules():
        if name.startswith("blocks.") and isinstance(module, nn.Linear):
            fos = FourOverSixLinear(module, config.get_module_config(name))
            del state[f"model.{name}.weight"]
            for key, value in fos.get_quantized_parameters("weight", module.weight.data).items():
                if key.endswith("metadata"):
                    value = value[:metadata_len].to(torch.int32)
                state[f"model.{name}.{key}"] = value
    return state


@pytest.mark.parametrize("metadata_len", [6, 4])  # fouroversix 1.0.5 writes 6 entries; LongLive's own code 4
def test_longlive_materialized_checkpoint_loads_and_runs(tiny_model, tmp_path, metadata_len):
    state = _longlive_materialized(tiny_model, metadata_len=metadata_len)
    assert is_packed_state(state)
    torch.save({"generator": state}, tmp_path / "model_4o6.pt")
    ours = copy.deepcopy(tiny_model)
    quantize_model(ours, FourOverSixFormat(Quant4o6Config()), role="generator", path="emulate", training=False)
    loaded = copy.deepcopy(ours)
    for _, m in quantized_modules(loaded):  # forget what conversion computed: everything comes from the file
        m.quantized_weight_values.zero_()
    load_packed_checkpoint(loaded, tmp_path / "model_4o6.pt")
    for (name, a), (_, b) in zip(sorted(loaded.state_dict().items()), sorted(ours.state_dict().items())):
        assert torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                           b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b), name
    with torch.no_grad():
        torch.testing.assert_close(loaded(*INPUTS), ours(*INPUTS), rtol=0, atol=0)


def test_our_packed_safetensors_round_trip(tiny_model, tmp_path):
    fmt = FourOverSixFormat(Quant4o6Config(weight_scale_rule="static_6"))
    quantize_model(tiny_model, fmt, role="generator", path="emulate", training=False)
    save_packed_checkpoint(tiny_model, tmp_path / "packed.safetensors")
    size = (tmp_path / "packed.safetensors").stat().st_size
    fresh = copy.deepcopy(tiny_model)
    for _, m in quantized_modules(fresh):
        m.quantized_weight_scale_factors.zero_()
    load_packed_checkpoint(fresh, tmp_path / "packed.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(fresh(*INPUTS), tiny_model(*INPUTS), rtol=0, atol=0)
    assert size < sum(t.numel() * 4 for t in tiny_model.state_dict().values()) + 10_000


def test_a_bf16_checkpoint_is_not_a_packed_one(tiny_model):
    quantized = copy.deepcopy(tiny_model)
    quantize_model(quantized, FourOverSixFormat(Quant4o6Config()), role="generator", path="emulate", training=False)
    assert not is_packed_state(tiny_model.state_dict())
    with pytest.raises(ConfigError, match="unexpected"):  # .weight keys where packed tensors belong
        load_packed_checkpoint(quantized, tiny_model.state_dict())


def test_format_packed_state_moves_between_modules():
    fmt = FourOverSixFormat(Quant4o6Config())
    torch.manual_seed(0)
    a = fmt.convert(nn.Linear(64, 32), role="generator", training=False, path="emulate")
    b = fmt.convert(nn.Linear(64, 32), role="generator", training=False, path="emulate")
    b.bias = a.bias
    fmt.load_packed(b, fmt.packed_state(a))
    x = torch.randn(8, 64)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    trainable = fmt.convert(nn.Linear(64, 32), role="generator", training=True, path="emulate")
    assert set(fmt.packed_state(trainable)) == set(fmt.packed_state(a))  # Q(W) of the master weight
    with pytest.raises(ConfigError, match="modules converted for inference only"):
        fmt.load_packed(trainable, fmt.packed_state(a))
