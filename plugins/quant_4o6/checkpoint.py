"""Packed NVFP4 checkpoints: LongLive's materialized `model_4o6.pt` in, our packed safetensors out.

A materialized checkpoint holds, for each converted linear `<fqn>`, the buffers
`<fqn>.quantized_weight_{values, scale_factors, amax, metadata}` (and its bias) instead of
`<fqn>.weight`; everything else (embeddings, norms, head) stays in high precision. Both load
into a model whose linears were converted for inference (NVFP4Linear without master weights),
strictly: a missing or extra key is one ConfigError.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

import torch
from torch import nn

from longlive.model.checkpoint import load_strict, read_state_dict, save_safetensors_atomic
from longlive.model.convert import to_ours, unnest
from longlive_plugins.quant_4o6.format import normalize_packed

_PACKED_KEY = re.compile(r"^(.*\.)quantized_weight_(values|scale_factors|amax|metadata)$")


def is_packed_state(state: Mapping[str, object]) -> bool:
    """Whether a state dict holds materialized NVFP4 weights (`quantized_weight_*` keys)."""
    return any(_PACKED_KEY.match(k) for k in state)


def load_packed_checkpoint(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                           where: str = "model.checkpoint") -> int:
    """Load a materialized NVFP4 checkpoint (file or state dict) into a converted model; returns tensors loaded."""
    state = unnest(read_state_dict(source, where=where)) if not isinstance(source, Mapping) else unnest(source)
    ours, _ = to_ours({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, "auto")
    prefixes = {m[1] for k in ours if (m := _PACKED_KEY.match(k))}
    for prefix in prefixes:
        layer = {k[len(prefix):]: v for k, v in ours.items() if k.startswith(prefix) and _PACKED_KEY.match(k)}
        ours.update({prefix + k: v for k, v in normalize_packed(layer).items()})
    load_strict(model, ours, what=f"NVFP4 weights from {source if not isinstance(source, Mapping) else 'a state dict'}")
    return len(ours)


def save_packed_checkpoint(model: nn.Module, path: str | os.PathLike, *, metadata: Mapping[str, str] = ()) -> None:
    """Our packed checkpoint: the converted model's state dict (packed buffers + high-precision rest), safetensors."""
    save_safetensors_atomic(model.state_dict(), path, metadata={"format": "fouroversix-nvfp4", **dict(metadata)})
