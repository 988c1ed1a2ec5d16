"""The quantization applier, the [quant] table and the dtype-safe helpers, with a pure-PyTorch test format."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from fake_quant import FakeFormat, FakeQuantLinear
from longlive.config import experiment_from_table
from longlive.errors import ConfigError
from longlive.model.dit import WanDiT
from longlive.model.presets import dit_preset
from longlive.quant.apply import matches, quantize_model, select_path
from longlive.quant.format import cast_model, packed_bytes, quantized_modules, refresh_model
from longlive.run import make_run
from debug_experiment import DEBUG_EXPERIMENT

BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def _table(**quant):
    table = copy.deepcopy(DEBUG_EXPERIMENT)
    table["run"]["plugins"] = ["fake_quant:FakeQuant"]
    table["quant"] = quant
    return table


def test_patterns_exact_prefix_and_regex():
    assert matches("head.head", ["head"]) and matches("head", ["head"])
    assert not matches("header.x", ["head"])  # a prefix must end at a dot
    assert matches("blocks.3.ffn.0", [r"re:blocks\.\d+\.ffn\.0"])
    assert not matches("blocks.3.ffn.0.x", [r"re:blocks\.\d+\.ffn\.0"])  # re: matches the whole name


def test_keep_list_converts_exactly_the_block_linears(tiny_model):
    report = quantize_model(tiny_model, FakeFormat(), role="generator", path="emulate", training=False)
    converted = sorted(name for name, _ in quantized_modules(tiny_model))
    assert converted == sorted(f"blocks.{i}.{n}" for i in range(2) for n in BLOCK_LINEARS)
    assert report.converted == 20 and report.kept == 6  # text 2, time 2, time projection 1, head 1
    assert report.packed_bytes == packed_bytes(tiny_model) > 0
    assert isinstance(tiny_model.head.head, nn.Linear) and isinstance(tiny_model.text_embedding[0], nn.Linear)


def test_skip_list_exact_and_regex(tiny_model):
    report = quantize_model(tiny_model, FakeFormat(), role="generator", path="emulate", training=False,
                            skip=("blocks.0.ffn.0", r"re:blocks\.1\..*_attn\.[qk]"))
    assert report.converted == 20 - 1 - 4
    assert isinstance(tiny_model.blocks[0].ffn[0], nn.Linear) and isinstance(tiny_model.blocks[1].self_attn.q, nn.Linear)
    assert isinstance(tiny_model.blocks[1].self_attn.v, FakeQuantLinear)


def test_dimension_not_divisible_by_the_block_is_one_clear_error():
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 24))
    with pytest.raises(ConfigError, match=r"quant.generator: 1 \(24 x 32\) is not divisible by the block size 16.*"
                                          r"add \"1\" to quant.skip"):
        quantize_model(model, FakeFormat(), role="generator", path="emulate", training=False)
    assert quantize_model(model, FakeFormat(), role="generator", path="emulate", training=False,
                          skip=("1",)).converted == 1


def test_paths_real_auto_emulate(caplog):
    cpu = torch.device("cpu")
    assert select_path(FakeFormat(("cpu",)), "auto", cpu, where="quant.generator") == ("real", "")
    assert select_path(FakeFormat(("cpu",)), "emulate", cpu, where="quant.generator")[0] == "emulate"
    with pytest.raises(ConfigError, match=r"quant.generator: format 'fake8' cannot run its real path on cpu: "
                                          r"no fake8 kernels on cpu; set quant.mode = \"emulate\""):
        select_path(FakeFormat(), "real", cpu, where="quant.generator")
    with caplog.at_level(logging.WARNING):
        assert select_path(FakeFormat(), "auto", cpu, where="quant.generator") == ("emulate", "no fake8 kernels on cpu")
    assert "emulated on cpu" in caplog.text


def test_inference_output_close_and_cast_keeps_packed_dtypes(tiny_model):
    x, t, ctx = torch.randn(1, 48, 2, 8, 8), torch.tensor([500.0]), torch.randn(1, 16, 32)
    with torch.no_grad():
        ref = tiny_model(x, t, ctx)
        quantize_model(tiny_model, FakeFormat(), role="generator", path="emulate", training=False)
        out = tiny_model(x, t, ctx)
    assert torch.isfinite(out).all()
    assert 0 < (out - ref).norm() / ref.norm() < 0.05
    cast_model(tiny_model, torch.bfloat16)
    layer = tiny_model.blocks[0].ffn[0]
    assert layer.scales.dtype == torch.float8_e4m3fn and layer.codes.dtype == torch.int8
    assert layer.bias.dtype == torch.bfloat16 and tiny_model.head.head.weight.dtype == torch.bfloat16
    assert tiny_model.blocks[0].modulation.dtype == torch.bfloat16


def test_refresh_reaches_every_converted_module(tiny_model):
    quantize_model(tiny_model, FakeFormat(), role="generator", path="emulate", training=True)
    assert refresh_model(tiny_model) == 20
    assert all(m.refreshes == 1 for _, m in quantized_modules(tiny_model))


def test_quant_table_is_strict():
    with pytest.raises(ConfigError, match=r"quant.mode: \"fast\" is not allowed"):
        experiment_from_table(_table(generator="fake8", mode="fast"))
    with pytest.raises(ConfigError, match=r"quant.skipp: unknown key"):
        experiment_from_table(_table(skipp=["head"]))
    with pytest.raises(ConfigError, match=r"quant.skip: expected a list"):
        experiment_from_table(_table(skip="head"))
    with pytest.raises(ConfigError, match=r"quant.skip: 're:\(' is not a valid regular expression"):
        experiment_from_table(_table(skip=["re:("]))
    table = _table(generator="fp4-typo")
    with pytest.raises(ConfigError, match=r"quant.generator: unknown quant format 'fp4-typo'.*available: fake8"):
        make_run(experiment_from_table(table), create_dir=False)


def test_run_records_what_ran_per_role(tmp_path):
    from longlive.assembly import build_model
    from longlive.run import run_task

    run = make_run(experiment_from_table(_table(generator="fake8", mode="auto")), run_dir=tmp_path / "run")
    model = build_model(run)
    assert len(quantized_modules(model)) == 20
    assert run.quant["generator"]["path"] == "emulate" and run.quant["generator"]["converted"] == 20
    assert run.quant["generator"]["why"] == "no fake8 kernels on cpu"
    run_task(run)  # the generate task builds the model again through the hook
    import json

    result = json.loads((tmp_path / "run" / "result.json").read_text())
    versions = json.loads((tmp_path / "run" / "versions.json").read_text())
    assert result["quant"]["generator"]["format"] == "fake8" == versions["quant"]["generator"]["format"]
    assert 'generator = "fake8"' in (tmp_path / "run" / "experiment.toml").read_text()


def test_real_mode_fails_when_the_probe_says_no():
    from longlive.assembly import build_model

    run = make_run(experiment_from_table(_table(generator="fake8", mode="real")), create_dir=False)
    with pytest.raises(ConfigError, match="cannot run its real path on cpu"):
        build_model(run)
    table = _table(generator="fake8", mode="real")
    table["plugins"] = {"fake_quant:FakeQuant": {"real_devices": ["cpu"]}}
    run = make_run(experiment_from_table(table), create_dir=False)
    build_model(run)
    assert run.quant["generator"]["path"] == "real"


def test_a_5b_meta_model_declares_longlives_kept_modules():
    with torch.device("meta"):
        model = WanDiT(dit_preset("wan2.2-ti2v-5b"))
    report = quantize_model(model, FakeFormat(), role="generator", path="emulate", training=False)
    assert report.converted == 300 and report.kept == 6
