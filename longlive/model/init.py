"""Seeded random weights for modules that have no checkpoint (benchmarks, random-weight runs)."""
from __future__ import annotations

import torch
from torch import nn


def seeded_init(module: nn.Module, seed: int) -> None:
    """Random weights from `seed`, drawn on the parameters' device: matrices N(0, 1/fan_in),
    vectors 1 (weights, gains) or 0 (biases) plus N(0, 0.02)."""
    with torch.no_grad():
        for i, (name, p) in enumerate(module.named_parameters()):
            g = torch.Generator(device=p.device).manual_seed(seed * 100_003 + i)
            noise = torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32)
            if p.ndim <= 1:  # norm gains around 1, biases around 0
                base = 1.0 if name.endswith(("weight", "gamma")) else 0.0
                p.copy_(noise * 0.02 + base)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
            del noise
