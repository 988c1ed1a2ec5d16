"""Quantized copies of a master weight, kept until the weight changes.

A training-mode quantized linear keeps its FP32/BF16 master weight as a parameter and multiplies
with a quantized copy; quantizing it again in every forward would be wasted work. The copy is
keyed by the weight's version counter (bumped by every in-place update, the optimizer's
included), its storage, device and dtype, so a changed weight is never served stale; formats
also clear the cache after each optimizer step (`QuantFormat.refresh`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch


class QuantizedWeightCache:
    """Named quantized views of one weight (e.g. "w" for fprop, "w_t" for dgrad)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[Any, ...], Any]] = {}  # name -> (weight version, quantized)

    def get(self, name: str, weight: torch.Tensor, make: Callable[[torch.Tensor], Any]) -> Any:
        """`make(weight.detach())`, computed once per version of `weight`."""
        version = (weight._version, weight.data_ptr(), weight.device, weight.dtype)
        hit = self._entries.get(name)
        if hit is None or hit[0] != version:
            hit = self._entries[name] = (version, make(weight.detach()))
        return hit[1]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
