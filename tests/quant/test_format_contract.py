"""The quant_format contract, for every installed format (built-in plugins and installed packages).

Each format is found the way a run finds it: every installed plugin, default config, its
`longlive_register_components`. A format declares `expected_error`, the relative Frobenius error
of a converted linear against fp64 on random inputs; it is held to it for the forward in fp32 and
BF16 and for the straight-through/quantized training gradients. Also: the protocol and the probe,
packed state round trips (through the format and through a safetensors file), and casts that
leave packed tensors bit for bit alone. A format without a packed format (te_nvfp4: TE quantizes
the high-precision weights it holds) returns an empty `packed_state`, refuses packed tensors in
`load_packed` with a ConfigError, and round trips its high-precision state dict instead.
"""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from longlive.errors import ConfigError
from longlive.model.checkpoint import load_strict, save_safetensors_atomic
from longlive.quant.installed import installed_formats
from longlive.quant.format import QuantFormat


FORMATS = installed_formats()
NAMES = sorted(FORMATS)
IN, OUT, TOKENS = 256, 128, 64  # multiples of every format's block size (checked below)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t


def _linear(seed: int, dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(IN, OUT)
    with torch.no_grad():
        linear.weight.normal_(0.0, IN**-0.5)
        linear.bias.normal_()
    return linear.to(dtype)


def test_the_issue_formats_are_installed():
    assert {"fouroversix", "fp8_rowwise", "mxfp4", "te_nvfp4"} <= set(NAMES)  # mxfp4: examples/longlive-quant-mxfp4


@pytest.mark.parametrize("name", NAMES)
def test_protocol_block_size_expected_error_and_probe(name):
    fmt = FORMATS[name]
    assert isinstance(fmt, QuantFormat) and fmt.name == name
    assert IN % fmt.block_size == 0 and OUT % fmt.block_size == 0
    assert 0 < fmt.expected_error < 1
    ok, why = fmt.probe(torch.device("cpu"))
    assert (ok and why == "") or (not ok and why and "\n" not in why)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_linear_is_within_the_declared_error(name, dtype):
    fmt = FORMATS[name]
    linear = _linear(0, dtype)
    x = torch.randn(2, TOKENS // 2, IN, dtype=dtype)
    module = fmt.convert(copy.deepcopy(linear), role="generator", training=False, path="emulate")
    with torch.no_grad():
        y = module(x)
    assert y.dtype == dtype and y.shape == (2, TOKENS // 2, OUT) and torch.isfinite(y).all()
    exact = x.double() @ linear.weight.double().t()
    assert _rel(y.double() - linear.bias.double(), exact) < fmt.expected_error


@pytest.mark.parametrize("name", NAMES)
def test_training_gradients_are_within_the_declared_error(name):
    fmt = FORMATS[name]
    linear = _linear(1)
    module = fmt.convert(copy.deepcopy(linear), role="generator", training=True, path="emulate")
    assert module.weight.requires_grad
    x = torch.randn(TOKENS, IN, requires_grad=True)
    dy = torch.randn(TOKENS, OUT)
    module(x).backward(dy)
    assert _rel(module.weight.grad, dy.double().t() @ x.detach().double()) < fmt.expected_error
    assert _rel(x.grad, dy.double() @ linear.weight.double()) < fmt.expected_error
    torch.testing.assert_close(module.bias.grad, dy.sum(0))
    fmt.refresh(module)


@pytest.mark.parametrize("name", NAMES)
def test_packed_state_round_trips_through_the_format_and_a_file(name, tmp_path):
    fmt = FORMATS[name]
    x = torch.randn(TOKENS, IN)
    source = fmt.convert(_linear(2), role="generator", training=False, path="emulate")
    target = fmt.convert(_linear(3), role="generator", training=False, path="emulate")
    if fmt.packed_state(source) == {}:  # no packed format: refuses packed tensors, saves high precision
        with pytest.raises(ConfigError, match="no packed format"):
            fmt.load_packed(target, {"weight_fp4": torch.zeros(OUT, IN // 2, dtype=torch.uint8)})
        assert all(t.is_floating_point() for t in source.state_dict().values())
        fmt.load_packed(target, {})
        target.load_state_dict(source.state_dict())
    with torch.no_grad():
        want = source(x)
        target.bias.copy_(source.bias)
        fmt.load_packed(target, fmt.packed_state(source))
        assert torch.equal(target(x), want)
    save_safetensors_atomic(nn.Sequential(source).state_dict(), tmp_path / "packed.safetensors")
    fresh = nn.Sequential(fmt.convert(_linear(4), role="generator", training=False, path="emulate"))
    load_strict(fresh, load_file(tmp_path / "packed.safetensors"), what=f"{name} packed weights")
    with torch.no_grad():
        assert torch.equal(fresh(x), want)


@pytest.mark.parametrize("name", NAMES)
def test_cast_leaves_packed_tensors_alone(name):
    fmt = FORMATS[name]
    module = fmt.convert(_linear(5), role="generator", training=False, path="emulate")
    before = {k: v.clone() for k, v in fmt.packed_state(module).items()}
    assert fmt.cast(module, torch.bfloat16) is module
    after = fmt.packed_state(module)
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(_bits(after[k]), _bits(v)), k
    assert module.bias.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(module(torch.randn(TOKENS, IN, dtype=torch.bfloat16))).all()
