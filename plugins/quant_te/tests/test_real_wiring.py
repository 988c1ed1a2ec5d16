"""The real path's wiring up to TransformerEngine's API, against a stand-in that records the calls.

TransformerEngine cannot be installed here (no CUDA toolkit), so `RecordingTEStandIn` plays its
four names (te.Linear, te.autocast, NVFP4BlockScaling, te.is_nvfp4_available) and records how the
format calls them; it is passed to the format as its loader (no patching). What TE then computes
is TE's business; what we hand it is tested here.
"""
from __future__ import annotations

import contextlib
import importlib.util

import attrs
import pytest
import torch
from torch import nn

from longlive.quant.apply import quantize_model
from longlive.quant.format import forward_context, is_quantized, packed_bytes
from longlive_plugins.quant_te.format import TENVFP4Format, probe_real
from longlive_plugins.quant_te.plugin import QuantTEConfig
from longlive_plugins.quant_te.real import TELinear
from longlive_plugins.quant_te.te_api import TEApi


class RecordingTEStandIn:
    """A stand-in for TransformerEngine (not TE): plain nn.Linear modules and a recording autocast."""

    def __init__(self, nvfp4_available: tuple[bool, str] = (True, "")) -> None:
        self.calls: list[tuple] = []
        self.autocast_recipe = None  # the recipe of the autocast being entered, None outside
        self.nvfp4_available = nvfp4_available

    def api(self) -> TEApi:
        stand_in = self

        class StandInLinear(nn.Linear):
            def __init__(self, in_features, out_features, *, bias, params_dtype, device):
                stand_in.calls.append(("Linear", in_features, out_features, bias, params_dtype, device))
                super().__init__(in_features, out_features, bias=bias, dtype=params_dtype, device=device)

            def forward(self, x):
                stand_in.calls.append(("forward", tuple(x.shape), stand_in.autocast_recipe))
                return super().forward(x)

        @contextlib.contextmanager
        def autocast(*, enabled, recipe):
            self.calls.append(("autocast", enabled, recipe))
            self.autocast_recipe = recipe
            try:
                yield
            finally:
                self.autocast_recipe = None

        @attrs.frozen
        class StandInRecipe:
            fields: dict

        def nvfp4_block_scaling(**fields):
            self.calls.append(("NVFP4BlockScaling", fields))
            return StandInRecipe(fields)

        def is_nvfp4_available(*, return_reason):
            assert return_reason is True
            return self.nvfp4_available

        return TEApi(Linear=StandInLinear, autocast=autocast, NVFP4BlockScaling=nvfp4_block_scaling,
                     is_nvfp4_available=is_nvfp4_available)


class TwoLinears(nn.Module):
    KEEP_HIGH_PRECISION = ("head",)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 32, bias=False))
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        return self.head(self.body(x))


def _format(config=None, stand_in=None):
    stand_in = stand_in or RecordingTEStandIn()
    return TENVFP4Format(config or QuantTEConfig(), te_loader=stand_in.api), stand_in


def test_real_conversion_builds_te_linears_with_the_weights_and_forwards_inside_te_autocast():
    torch.manual_seed(0)
    model = TwoLinears().to(torch.bfloat16)
    want = model(torch.ones(3, 32, dtype=torch.bfloat16))
    fmt, te = _format(QuantTEConfig(disable_rht=True, disable_stochastic_rounding=True, nvfp4_4over6="weights",
                                    nvfp4_4over6_err_mode="MSE"))
    report = quantize_model(model, fmt, role="generator", path="real", training=False)
    assert report.converted == 2 and report.kept == 1 and report.path == "real"
    assert isinstance(model.body[0], TELinear) and is_quantized(model.body[2]) and isinstance(model.head, nn.Linear)
    linears = [c for c in te.calls if c[0] == "Linear"]
    assert linears == [("Linear", 32, 48, True, torch.bfloat16, torch.device("cpu")),
                       ("Linear", 48, 32, False, torch.bfloat16, torch.device("cpu"))]
    assert model.body[2].bias is None and model.body[0].weight.dtype == torch.bfloat16
    assert packed_bytes(model) == 0  # no packed format
    with forward_context(model):
        got = model(torch.ones(3, 32, dtype=torch.bfloat16))
    assert torch.equal(got, want)  # the stand-in computes in high precision: the weights were copied in
    recipes = [c for c in te.calls if c[0] == "NVFP4BlockScaling"]
    assert recipes == [("NVFP4BlockScaling", {
        "disable_rht": True, "disable_stochastic_rounding": True, "disable_2d_quantization": False,
        "nvfp4_4over6": "weights", "nvfp4_4over6_e4m3_use_256": "all", "nvfp4_4over6_err_mode": "MSE",
        "row_scaled_activation": False, "backward_override": None})]
    autocasts = [c for c in te.calls if c[0] == "autocast"]
    assert len(autocasts) == 1 and autocasts[0][1] is True
    forwards = [c for c in te.calls if c[0] == "forward"]
    assert len(forwards) == 2 and all(c[2] is autocasts[0][2] for c in forwards)  # both inside the autocast


def test_real_training_modules_keep_requires_grad_and_train_through_te():
    linear = nn.Linear(16, 16)
    linear.bias.requires_grad_(False)
    fmt, te = _format()
    module = fmt.convert(linear, role="generator", training=True, path="real")
    assert module.weight.requires_grad and not module.bias.requires_grad
    with fmt.forward_context():
        module(torch.randn(4, 16)).sum().backward()
    assert module.weight.grad is not None and module.weight.grad.shape == (16, 16)
    assert fmt.cast(module, torch.bfloat16) is module and module.weight.dtype == torch.bfloat16


def test_emulated_modules_need_no_te_and_enter_no_autocast():
    def no_te():
        raise AssertionError("the emulated path must not load TransformerEngine")

    fmt = TENVFP4Format(QuantTEConfig(), te_loader=no_te)
    module = fmt.convert(nn.Linear(32, 16), role="generator", training=False, path="emulate")
    with fmt.forward_context():
        assert module(torch.randn(2, 32)).shape == (2, 16)


def test_probe_needs_cuda_capability_10_and_te(monkeypatch):
    ok, why = probe_real(torch.device("cpu"), RecordingTEStandIn().api)
    assert not ok and "compute capability >= 10.0" in why and "cpu" in why
    # On CUDA devices (monkeypatching torch's capability query, not our code):
    for capability, available, want in [((9, 0), (True, ""), "compute capability 9.0 < 10.0"),
                                        ((10, 0), (False, "no cuBLASLt"), "TE reports NVFP4 unavailable: no cuBLASLt"),
                                        ((10, 0), (True, ""), "")]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        ok, why = probe_real(torch.device("cuda", 0), RecordingTEStandIn(available).api)
        assert ok == (want == "") and want in why

    def missing():
        raise ImportError("No module named 'transformer_engine'")

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    ok, why = probe_real(torch.device("cuda", 0), missing)
    assert not ok and "transformer_engine is not importable" in why and "longlive[te]" in why


def test_the_real_loader_fails_plainly_where_te_is_missing():
    fmt = TENVFP4Format(QuantTEConfig())  # the real loader
    ok, why = fmt.probe(torch.device("cpu"))
    assert not ok and "\n" not in why
    if importlib.util.find_spec("transformer_engine") is None:  # CPU machines: TE cannot be installed
        with pytest.raises(ImportError):
            fmt.convert(nn.Linear(16, 16), role="generator", training=False, path="real")
