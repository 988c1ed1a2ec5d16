"""Exponential moving average of a model's trainable parameters (fp32 shadow copies).

After optimizer step s (1-based): for s <= start the shadow copies the parameters; afterwards
shadow <- decay * shadow + (1 - decay) * param (LongLive 2.0: decay 0.99 from ema_start_step).
Buffers are not averaged: `model_state` takes them from the live model.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from longlive.errors import ConfigError
from longlive.quant.format import cast_model

log = logging.getLogger(__name__)


class EMA:
    """fp32 shadow parameters by name; owned by the trainer, saved in its checkpoints."""

    def __init__(self, model: nn.Module, *, decay: float, start: int = 0) -> None:
        self.decay, self.start = decay, start
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the parameters after optimizer step `step` (1-based) into the shadow."""
        for name, p in model.named_parameters():
            if name not in self.shadow:
                continue
            if step <= self.start:
                self.shadow[name].copy_(p.detach())
            else:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def model_state(self, model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The model's full state dict with the averaged parameters in place of the live ones."""
        state = {k: self.shadow.get(k, v).detach() for k, v in model.state_dict().items()}
        return {k: v.to(dtype) if dtype is not None and _castable(v) else v for k, v in state.items()}

    def averaged_copy(self, model: nn.Module, dtype: torch.dtype) -> nn.Module:
        """A detached copy of `model` holding the averaged weights in `dtype`, in eval mode."""
        clone = copy.deepcopy(model)
        clone.load_state_dict(self.model_state(model))
        return cast_model(clone, dtype).eval().requires_grad_(False)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "start": self.start, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ConfigError(f"resume: the checkpoint's EMA does not match the model (e.g. {sorted(missing)[:3]}); "
                              f"resume with the same model.preset")
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)


def _castable(t: torch.Tensor) -> bool:
    """High-precision floats only: packed formats' 1-byte float scales (float8 E4M3) keep their dtype."""
    return t.is_floating_point() and t.element_size() > 1
