"""Packed NVFP4 checkpoints: LongLive's materialized `model_4o6.pt` in, our packed safetensors out.

A materialized checkpoint holds, for each converted linear `<fqn>`, the buffers
`<fqn>.quantized_weight_{values, scale_factors, amax, metadata}` (and its bias) instead of
`<fqn>.weight`; everything else (embeddings, norms, head) stays in high precision. In a run,
`[model] checkpoint` takes either file: the core converts the packed linears before the load
(longlive/quant/packed.py) and the format's `load_packed` reads LongLive's layout variants. The
function below does the same for a model already converted for inference, strictly: a missing
or extra key is one ConfigError.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

import torch
from torch import nn

from longlive.model.checkpoint import read_state_dict, save_safetensors_atomic
from longlive.model.convert import load_dit_state, unnest

_PACKED_KEY = re.compile(r"^(.*\.)quantized_weight_(values|scale_factors|amax|metadata)$")


def is_packed_state(state: Mapping[str, object]) -> bool:
    """Whether a state dict holds materialized NVFP4 weights (`quantized_weight_*` keys)."""
    return any(_PACKED_KEY.match(k) for k in state)


def load_packed_checkpoint(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                           where: str = "model.checkpoint") -> int:
    """Load a materialized NVFP4 checkpoint (file or state dict) into a model converted for inference,
    through the core's loader (what `[model] checkpoint` does in a run); returns the tensors in it."""
    state = unnest(source if isinstance(source, Mapping) else read_state_dict(source, where=where))
    load_dit_state(model, state, "auto", what=f"NVFP4 weights from {source if not isinstance(source, Mapping) else 'a state dict'}")
    return len(state)


def save_packed_checkpoint(model: nn.Module, path: str | os.PathLike, *, metadata: Mapping[str, str] = ()) -> None:
    """Our packed checkpoint: the converted model's state dict (packed buffers + high-precision rest), safetensors."""
    save_safetensors_atomic(model.state_dict(), path, metadata={"format": "fouroversix-nvfp4", **dict(metadata)})
