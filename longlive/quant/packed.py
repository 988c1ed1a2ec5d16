"""Packed (materialized) checkpoints: linears whose weights a checkpoint stores in a format's layout.

LongLive serves NVFP4 from a materialized checkpoint (`model_4o6.pt`): each quantized linear
`<fqn>` holds its format's packed tensors (`<fqn>.quantized_weight_values`, ...) instead of
`<fqn>.weight`. Such a checkpoint loads in two steps of the model build:

- `convert_packed_linears` (phase convert_for_checkpoint, the model still on the meta device):
  every `nn.Linear` the checkpoint stores without a `.weight` but with other tensors (not only
  its bias) under its name is converted, for inference, by the format `[quant]` names for the role. The checkpoint
  decides which linears are quantized; the applier then converts no others.
- `split_packed_state` (phase place_and_load): the packed tensors of the converted modules go to
  their format's `load_packed` (which knows its own layout variants); the rest loads strictly.

Any format with a packed layout works this way; one without (it quantizes at startup) never
sees a checkpoint without `.weight` keys.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from longlive.errors import ConfigError
from longlive.quant.apply import format_object, select_path
from longlive.quant.format import NONE, quantized_modules


def packed_linears(model: nn.Module, keys: Iterable[str]) -> list[str]:
    """Names of the model's `nn.Linear`s that `keys` (a checkpoint's, in our naming) store packed:
    tensors under the linear's name other than its bias, and no `<fqn>.weight`."""
    leaves: dict[str, set[str]] = defaultdict(set)
    for key in keys:
        fqn, _, leaf = key.rpartition(".")
        leaves[fqn].add(leaf)
    return [fqn for fqn, m in model.named_modules()
            if isinstance(m, nn.Linear) and "weight" not in leaves[fqn] and leaves[fqn] - {"bias"}]


def convert_packed_linears(model: nn.Module, keys: Iterable[str], *, role: str, training: bool, run: Any,
                           where: str = "model.checkpoint") -> int:
    """Convert (on meta) the linears the checkpoint stores packed, with the role's format; returns how many."""
    fqns = packed_linears(model, keys)
    if not fqns:
        return 0
    name = getattr(run.experiment.quant, role)
    if name == NONE:
        raise ConfigError(f"{where}: the checkpoint stores {len(fqns)} linears packed (e.g. {fqns[0]}); set "
                          f"quant.{role} to the format that wrote it (\"fouroversix\" for LongLive's model_4o6.pt), "
                          f"or load the BF16 weights")
    if training:
        raise ConfigError(f"{where}: the checkpoint stores {len(fqns)} linears packed (e.g. {fqns[0]}), which hold no "
                          f"master weights to train; start training from the BF16 weights")
    fmt = format_object(run.components.get("quant_format", name, where=f"quant.{role}").value)
    path, _ = select_path(fmt, run.experiment.quant.mode, run.device, where=f"quant.{role}")
    for fqn in fqns:
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, fmt.convert(getattr(parent, child), role=role, training=False, path=path))
    return len(fqns)


def split_packed_state(model: nn.Module, state: Mapping[str, torch.Tensor]
                       ) -> tuple[dict[str, dict[str, torch.Tensor]], set[str]]:
    """({fqn: the packed tensors of converted module fqn, by local name}, the keys they use).

    A converted module's packed names are those its format's `packed_state` reports; tensors a
    checkpoint lacks are left out here and reported by the format's `load_packed`.
    """
    packed: dict[str, dict[str, torch.Tensor]] = {}
    used: set[str] = set()
    for fqn, module in quantized_modules(model):
        names = module.quant_format.packed_state(module)
        keys = {name: f"{fqn}.{name}" for name in names}
        packed[fqn] = {name: state[key] for name, key in keys.items() if key in state}
        used.update(keys.values())
    return packed, used


def load_packed_modules(model: nn.Module, packed: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Hand each converted module its packed tensors through its format."""
    for fqn, tensors in packed.items():
        module = model.get_submodule(fqn)
        module.quant_format.load_packed(module, dict(tensors))
