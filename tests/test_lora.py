"""LoRA: wrapper, merge, adapter files (ours and LongLive's PEFT names), and the inference/training order."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fake_quant import FakeFormat, FakeQuantLinear
from longlive.config import experiment_from_table
from longlive.errors import ConfigError
from longlive.lora import (LoRALinear, adapter_state_dict, adapter_targets, attach, load_adapters, merge,
                           merge_adapters, read_adapters, save_adapters)
from longlive.quant.apply import quantize_model
from longlive.run import make_run
from debug_experiment import DEBUG_EXPERIMENT


def _randomize_adapters(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(1, 48, 2, 8, 8, generator=g), torch.tensor([500.0]), torch.randn(1, 16, 32, generator=g))


def test_a_new_adapter_changes_nothing_and_merging_equals_the_wrapped_forward(tiny_model):
    x = _inputs()
    with torch.no_grad():
        ref = tiny_model(*x)
        targets = attach(tiny_model, rank=4, alpha=8.0)
        assert len(targets) == 20 and targets == [t for t in targets if t.startswith("blocks.")]
        torch.testing.assert_close(tiny_model(*x), ref, rtol=0, atol=0)  # B = 0
        _randomize_adapters(tiny_model)
        wrapped = tiny_model(*x)
        assert (wrapped - ref).abs().max() > 1e-3
        assert merge(tiny_model) == 20
        assert not any(isinstance(m, LoRALinear) for m in tiny_model.modules())
        torch.testing.assert_close(tiny_model(*x), wrapped, rtol=1e-5, atol=1e-5)


def test_merge_then_quantize_equals_quantizing_the_merged_weights(tiny_model):
    reference = copy.deepcopy(tiny_model)
    attach(tiny_model, rank=4, alpha=4.0)
    _randomize_adapters(tiny_model)
    state = adapter_state_dict(tiny_model)
    with torch.no_grad():  # the merged weights, computed by hand: W + alpha/r * B A
        for name, module in reference.named_modules():
            if f"{name}.lora_A.weight" in state:
                module.weight += state[f"{name}.lora_B.weight"] @ state[f"{name}.lora_A.weight"]
    merged = copy.deepcopy(reference)
    quantize_model(merged, FakeFormat(), role="generator", path="emulate", training=False)
    base = copy.deepcopy(tiny_model)  # the wrapped model: merge, then quantize (the inference order)
    merge(base)
    quantize_model(base, FakeFormat(), role="generator", path="emulate", training=False)
    for (name, a), (_, b) in zip(sorted(base.state_dict().items()), sorted(merged.state_dict().items())):
        assert torch.equal(a, b), name
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(base(*x), merged(*x), rtol=0, atol=0)


def test_merge_adapters_equals_the_hand_merge(tiny_model):
    source = copy.deepcopy(tiny_model)
    attach(source, rank=2, alpha=6.0)
    _randomize_adapters(source, seed=3)
    state = adapter_state_dict(source)
    merge_adapters(tiny_model, state, rank=2, alpha=6.0)
    merge(source)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(tiny_model.state_dict()[key], value)


def test_training_order_wraps_the_quantized_base_and_a_quantized_base_cannot_merge(tiny_model):
    quantize_model(tiny_model, FakeFormat(), role="generator", path="emulate", training=True)
    tiny_model.requires_grad_(False)
    attach(tiny_model, rank=4, alpha=4.0)
    layer = tiny_model.blocks[0].self_attn.q
    assert isinstance(layer, LoRALinear) and isinstance(layer.base, FakeQuantLinear)
    trainable = sorted(n for n, p in tiny_model.named_parameters() if p.requires_grad)
    assert trainable and all(".lora_" in n for n in trainable) and len(trainable) == 40
    x, t, ctx = _inputs()
    tiny_model(x, t, ctx).square().mean().backward()
    assert layer.lora_A.weight.grad is None or layer.lora_B.weight.grad.abs().sum() > 0
    assert layer.base.weight.grad is None
    with pytest.raises(ConfigError, match="merge before quantizing"):
        merge(tiny_model)


def test_adapter_file_round_trip(tiny_model, tmp_path):
    attach(tiny_model, rank=4, alpha=8.0)
    _randomize_adapters(tiny_model)
    save_adapters(tiny_model, tmp_path / "a.safetensors")
    state, rank, alpha = read_adapters(tmp_path / "a.safetensors")
    assert (rank, alpha) == (4, 8.0)
    for key, value in adapter_state_dict(tiny_model).items():
        assert torch.equal(state[key], value)
    other = copy.deepcopy(tiny_model)
    _randomize_adapters(other, seed=9)
    load_adapters(other, state)
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(other(*x), tiny_model(*x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="adapters do not fit the model: 1 missing"):
        load_adapters(other, {k: v for k, v in list(state.items())[1:]})


def test_longlive_checkpoints_with_peft_names_load(tiny_model, tmp_path):
    """LongLive's checkpoint: {"generator_lora": get_peft_model_state_dict(...)} with PEFT and FSDP names."""
    attach(ref := copy.deepcopy(tiny_model), rank=8, alpha=8.0)
    _randomize_adapters(ref)
    ours = adapter_state_dict(ref)
    peft = {f"base_model.model.model._fsdp_wrapped_module.{k}": v for k, v in ours.items()}
    peft_default = {k.replace(".weight", ".default.weight"): v for k, v in peft.items()}
    for i, entry in enumerate((peft, peft_default)):
        path = tmp_path / f"longlive_{i}.pt"
        torch.save({"generator_lora": entry, "critic_lora": {}, "step": 100}, path)
        state, rank, alpha = read_adapters(path)
        assert (rank, alpha) == (8, 8.0)  # LongLive: r128 / alpha128, alpha = rank when not recorded
        assert set(state) == set(ours) and all(torch.equal(state[k], ours[k]) for k in ours)
    merge_adapters(tiny_model, state, rank=rank, alpha=alpha)
    merge(ref)
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(*x), ref(*x), rtol=1e-5, atol=1e-5)
    torch.save({"generator": {"x": torch.zeros(1)}}, tmp_path / "none.pt")
    with pytest.raises(ConfigError, match="holds no LoRA adapter"):
        read_adapters(tmp_path / "none.pt")


def test_model_lora_is_merged_before_quantizing_at_inference(tmp_path):
    from longlive.assembly import build_model

    table = copy.deepcopy(DEBUG_EXPERIMENT)
    table["run"]["plugins"] = ["fake_quant:FakeQuant"]
    run = make_run(experiment_from_table(table), create_dir=False)
    plain = build_model(run)
    attach(plain, rank=4, alpha=4.0)
    _randomize_adapters(plain)
    save_adapters(plain, tmp_path / "lora.safetensors")
    merge(plain)
    table["model"]["lora"] = str(tmp_path / "lora.safetensors")
    table["quant"] = {"generator": "fake8"}
    run = make_run(experiment_from_table(table), create_dir=False)
    served = build_model(run)
    assert not any(isinstance(m, LoRALinear) for m in served.modules())
    expected = copy.deepcopy(plain)
    quantize_model(expected, FakeFormat(), role="generator", path="emulate", training=False)
    for key, value in expected.state_dict().items():
        assert torch.equal(served.state_dict()[key], value), key
    assert adapter_targets(served) == adapter_targets(expected)
