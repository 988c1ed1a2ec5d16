"""The MXFP4 example format: E2M1 rounding, E8M0 scales per the OCP MX spec, the linear, packing, casts, a toy run."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from longlive.cli import main
from longlive.config import experiment_from_table
from longlive.errors import ConfigError
from longlive.quant.apply import quantize_model, select_path
from longlive.quant.format import QuantFormat, cast_model, quantized_modules
from longlive.registry.manager import installed_plugins
from longlive.run import make_run, run_task
from longlive_quant_mxfp4 import QuantMXFP4Config, mxfp4
from longlive_quant_mxfp4.format import MXFP4Format

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXPERIMENT = Path(__file__).parents[1] / "toy_generate_mxfp4.toml"


def _fmt(**config) -> MXFP4Format:
    return MXFP4Format(QuantMXFP4Config(**config))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _reference_mxfp4(x: torch.Tensor) -> torch.Tensor:
    """Plain per-block loop in fp64: X = 2^(floor(log2 amax) - 2), nearest E2M1 (ties to even code), clamp 6."""
    grid = torch.tensor(mxfp4.E2M1_VALUES, dtype=torch.float64)
    out = torch.empty_like(x, dtype=torch.float64)
    for r in range(x.shape[0]):
        for b in range(0, x.shape[1], 32):
            block = x[r, b:b + 32].double()
            amax = block.abs().max().item()
            scale = 2.0 ** (torch.tensor(amax).log2().floor().item() - 2) if amax > 0 else 2.0**-127
            v = (block / scale).abs().clamp(max=6.0)
            dist = (v[:, None] - grid).abs()
            best = dist.min(-1).values
            codes = torch.tensor([min(i for i in range(8) if dist[j, i] == best[j] and
                                      (i % 2 == 0 or (dist[j] == best[j]).sum() == 1)) for j in range(32)])
            out[r, b:b + 32] = grid[codes] * block.sign() * scale
    return out


def test_the_plugin_is_installed_listed_and_the_format_satisfies_the_protocol(capsys):
    assert "quant_mxfp4" in installed_plugins()
    assert main(["plugins"]) == 0
    assert "quant_mxfp4 0.1.0 (longlive-quant-mxfp4" in capsys.readouterr().out
    assert isinstance(_fmt(), QuantFormat)


def test_e2m1_rounds_to_nearest_with_ties_to_even_and_saturates():
    v = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.9, -0.3, -6.5, 0.0, 2.9])
    want = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -0.5, -6.0, 0.0, 3.0])
    assert torch.equal(mxfp4.e2m1_values(mxfp4.e2m1_codes(v)), want)


def test_quantize_matches_the_plain_spec_reference_and_packs_two_codes_a_byte():
    torch.manual_seed(0)
    x = torch.randn(3, 96) * torch.tensor([1e-3, 1.0, 300.0])[:, None]
    x[1, 32:64] = 0.0  # an all-zero block
    packed, scales = mxfp4.quantize(x)
    assert packed.shape == (3, 48) and scales.shape == (3, 3) and packed.dtype == scales.dtype == torch.uint8
    assert torch.equal(mxfp4.dequantize(packed, scales).double(), _reference_mxfp4(x))
    amax = x.reshape(3, 3, 32).abs().amax(-1)
    nonzero = amax > 0
    assert torch.equal(scales[nonzero].long() - 127, amax[nonzero].log2().floor().long() - 2)
    assert mxfp4.dequantize(packed, scales)[1, 32:64].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_emulated_linear_is_the_dequantized_gemm_and_within_the_declared_error(dtype):
    torch.manual_seed(1)
    linear = nn.Linear(128, 64).to(dtype)
    x = torch.randn(2, 9, 128, dtype=dtype)
    layer = _fmt().convert(linear, role="generator", training=False, path="emulate")
    with torch.no_grad():
        y = layer(x)
    ref = mxfp4.fake_quantize(x.float()) @ mxfp4.fake_quantize(linear.weight.float()).t() + linear.bias.float()
    torch.testing.assert_close(y.float(), ref, rtol=0 if dtype == torch.float32 else 2**-8,
                               atol=1e-5 if dtype == torch.float32 else 1e-2)
    exact = x.double() @ linear.weight.double().t()
    assert _rel(y.double() - linear.bias.double(), exact) < _fmt().expected_error


def test_weight_only_mode_leaves_activations_alone():
    torch.manual_seed(2)
    linear = nn.Linear(64, 32)
    layer = _fmt(quantize_activations=False).convert(linear, role="generator", training=False, path="emulate")
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ mxfp4.fake_quantize(linear.weight).t() + linear.bias)


def test_there_is_no_real_path_and_auto_emulates():
    ok, why = _fmt().probe(torch.device("cpu"))
    assert not ok and "no real path" in why
    with pytest.raises(ConfigError, match="format 'mxfp4' cannot run its real path"):
        select_path(_fmt(), "real", torch.device("cpu"), where="quant.generator")
    assert select_path(_fmt(), "auto", torch.device("cpu"), where="quant.generator")[0] == "emulate"


def test_training_is_straight_through():
    torch.manual_seed(3)
    linear = nn.Linear(64, 32)
    layer = _fmt().convert(linear, role="generator", training=True, path="emulate")
    x = torch.randn(6, 64, requires_grad=True)
    dy = torch.randn(6, 32)
    layer(x).backward(dy)
    torch.testing.assert_close(x.grad, dy @ mxfp4.fake_quantize(linear.weight.detach()))
    torch.testing.assert_close(layer.weight.grad, dy.t() @ mxfp4.fake_quantize(x.detach()))


def test_packed_state_round_trips_and_casts_leave_it_alone(tiny_model):
    x, t, ctx = torch.randn(1, 48, 2, 8, 8), torch.tensor([500.0]), torch.randn(1, 16, 32)
    model = copy.deepcopy(tiny_model)
    assert quantize_model(model, _fmt(), role="generator", path="emulate", training=False).converted == 20
    with torch.no_grad():
        out, ref = model(x, t, ctx), tiny_model(x, t, ctx)
    assert _rel(out, ref) < 0.3 and torch.isfinite(out).all()
    fresh = copy.deepcopy(tiny_model)
    quantize_model(fresh, _fmt(), role="generator", path="emulate", training=False)
    fmt = _fmt()
    for (_, a), (_, b) in zip(quantized_modules(model), quantized_modules(fresh)):
        b.weight_mx.zero_()
        fmt.load_packed(b, fmt.packed_state(a))
    with torch.no_grad():
        assert torch.equal(fresh(x, t, ctx), out)
    layer = quantized_modules(model)[0][1]
    with pytest.raises(ConfigError, match="weight_mx is torch.float32"):
        fmt.load_packed(layer, {"weight_mx": layer.weight_mx.float(), "weight_scale_e8m0": layer.weight_scale_e8m0})
    packed = {k: v.clone() for k, v in fmt.packed_state(layer).items()}
    cast_model(model, torch.bfloat16)
    assert all(torch.equal(v, getattr(layer, k)) for k, v in packed.items()) and layer.bias.dtype == torch.bfloat16


def test_toy_w4a4_generation_with_mxfp4_runs_shortened(tmp_path):
    table = tomllib.loads(EXPERIMENT.read_text())
    table["sampler"].update(num_frames=8, steps=2)
    table["generate"] = {"prompt": "a small red circle moves right steadily and bounces on a dark blue background",
                         "fps": 8.0}
    run = make_run(experiment_from_table(table, source=EXPERIMENT), run_dir=tmp_path / "run")
    result = run_task(run)
    assert result["frames"] == 8 and run.quant["generator"]["converted"] == 60  # 6 blocks x 10 linears
    record = json.loads((tmp_path / "run" / "result.json").read_text())["quant"]["generator"]
    assert record["format"] == "mxfp4" and record["path"] == "emulate" and "no real path" in record["why"]
    assert result["toybench"]["overall"]["color"] > 0.5  # the MXFP4 model still draws the red object
