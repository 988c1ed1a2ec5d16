"""Which linears a checkpoint stores packed (longlive/quant/packed.py); the end-to-end loads are in
plugins/quant_4o6/tests/test_packed_build.py (fouroversix's packed layout, ours and LongLive's)."""
from __future__ import annotations

from torch import nn

from longlive.quant.packed import packed_linears


def test_packed_linears_are_those_without_a_weight_key():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), nn.Linear(4, 4))
    keys = ["0.weight", "0.bias", "1.0.quantized_weight_values", "1.0.quantized_weight_amax", "1.0.bias",
            "1.1.weight", "1.1.bias", "2.weight"]
    assert packed_linears(model, keys) == ["1.0"]
    assert packed_linears(model, [k for k in keys if "quantized" not in k]) == []
    assert packed_linears(model, ["1.1.quantized_weight_values"]) == []  # only linears convert
