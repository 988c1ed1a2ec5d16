"""The quantized-weight cache: one computation per weight version, recomputed after an in-place update."""
from __future__ import annotations

import torch

from longlive.quant.weight_cache import QuantizedWeightCache


def test_recomputes_only_when_the_weight_changes():
    calls = []
    cache = QuantizedWeightCache()
    w = torch.nn.Parameter(torch.randn(4, 4))
    make = lambda t: calls.append(1) or t * 2  # noqa: E731
    first = cache.get("w", w, make)
    assert cache.get("w", w, make) is first and len(calls) == 1
    with torch.no_grad():
        w.add_(1.0)  # an optimizer step: the version counter moves
    assert torch.equal(cache.get("w", w, make), (w.detach() * 2)) and len(calls) == 2
    cache.get("w_t", w, lambda t: t.t())
    assert len(cache) == 2
    w.data = w.data.double()  # a cast: new storage and dtype
    assert cache.get("w", w, make).dtype == torch.float64 and len(calls) == 3
    cache.clear()
    assert not cache
