"""Key maps between our WanVAE, Wan's original `Wan2.2_VAE.pth` and diffusers' AutoencoderKLWan.

Our module names follow Wan's containers (`encoder.downsamples.i.downsamples.j`, `middle.k`,
top-level `conv1`/`conv2`), so Wan's checkpoint differs only in the names inside a residual
block, an encoder/decoder head and a resampler:

    ours                          Wan                    diffusers
    <block>.norm1 / conv1         <block>.residual.0 / 2 <block>.norm1 / conv1
    <block>.norm2 / conv2         <block>.residual.3 / 6 <block>.norm2 / conv2
    <block>.shortcut              <block>.shortcut       <block>.conv_shortcut
    head_norm / head_conv         head.0 / head.2        norm_out / conv_out
    spatial_conv                  resample.1             resample.1
    conv1 / conv2 (top level)     conv1 / conv2          quant_conv / post_quant_conv
    {enc,dec}.conv1               same                   {enc,dec}.conv_in
    middle.0 / 1 / 2              same                   mid_block.resnets.0 / attentions.0 / resnets.1
    encoder.downsamples.i.downsamples.j   same   encoder.down_blocks.i.resnets.j (j < n) or .downsampler (j = n)
    decoder.upsamples.i.upsamples.j       same   decoder.up_blocks.i.resnets.j (j <= n) or .upsampler (j = n + 1)

with n = num_res_blocks. Tensors are passed through unchanged (same shapes in all three).
"""
from __future__ import annotations

import logging
import os
import re
from typing import Mapping

import torch

from longlive.config import CHECKPOINT_FORMATS
from longlive.errors import ConfigError
from longlive.model.checkpoint import load_strict, read_state_dict

log = logging.getLogger(__name__)

FORMATS = CHECKPOINT_FORMATS  # one list: the [model] schema's

# (our fragment, Wan fragment): a residual block's parts sit at `.<index>.` in a ModuleList.
_WAN_RENAMES = (
    (r"\.(\d+)\.norm1\.", r".\1.residual.0.", r"\.residual\.0\.", ".norm1."),
    (r"\.(\d+)\.conv1\.", r".\1.residual.2.", r"\.residual\.2\.", ".conv1."),
    (r"\.(\d+)\.norm2\.", r".\1.residual.3.", r"\.residual\.3\.", ".norm2."),
    (r"\.(\d+)\.conv2\.", r".\1.residual.6.", r"\.residual\.6\.", ".conv2."),
    (r"\.head_norm\.", ".head.0.", r"\.head\.0\.", ".head_norm."),
    (r"\.head_conv\.", ".head.2.", r"\.head\.2\.", ".head_conv."),
    (r"\.spatial_conv\.", ".resample.1.", r"\.resample\.1\.", ".spatial_conv."),
)
_TO_WAN = tuple((re.compile(a), b) for a, b, _, _ in _WAN_RENAMES)
_FROM_WAN = tuple((re.compile(c), d) for _, _, c, d in _WAN_RENAMES)


def _rename(state: Mapping[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def longlive_to_wan(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> Wan's original `Wan2.2_VAE.pth` keys."""
    return _rename(state, _TO_WAN)


def wan_to_longlive(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan's original keys -> ours."""
    return _rename(state, _FROM_WAN)


# ---- diffusers --------------------------------------------------------------------------

_DIFFUSERS_TOP = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv."}
_DIFFUSERS_SIDE = {  # inside encoder./decoder.: our prefix -> diffusers prefix
    "conv1.": "conv_in.",
    "head_norm.": "norm_out.",
    "head_conv.": "conv_out.",
    "middle.0.": "mid_block.resnets.0.",
    "middle.1.": "mid_block.attentions.0.",
    "middle.2.": "mid_block.resnets.1.",
}
_DIFFUSERS_PARTS = {"shortcut.": "conv_shortcut.", "spatial_conv.": "resample.1."}  # inside a block entry
_OUR_BLOCK = re.compile(r"^(encoder|decoder)\.(down|up)samples\.(\d+)\.(?:down|up)samples\.(\d+)\.(.*)$")
_DIFFUSERS_BLOCK = re.compile(
    r"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(?:resnets\.(\d+)|(down|up)sampler)\.(.*)$")


def _swap_prefix(key: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _resampler_index(side: str, num_res_blocks: int) -> int:
    return num_res_blocks if side == "encoder" else num_res_blocks + 1


def longlive_to_diffusers(state: Mapping[str, torch.Tensor], *, num_res_blocks: int) -> dict[str, torch.Tensor]:
    """Our keys -> diffusers `AutoencoderKLWan(is_residual=True)` keys."""
    out = {}
    for key, value in state.items():
        m = _OUR_BLOCK.match(key)
        if m:
            side, kind, i, j, rest = m.groups()
            slot = f"{kind}sampler" if int(j) == _resampler_index(side, num_res_blocks) else f"resnets.{j}"
            key = f"{side}.{kind}_blocks.{i}.{slot}.{_swap_prefix(rest, _DIFFUSERS_PARTS)}"
        elif key.startswith(("encoder.", "decoder.")):
            side, rest = key.split(".", 1)  # middle blocks keep their width: no shortcut to rename
            key = f"{side}.{_swap_prefix(rest, _DIFFUSERS_SIDE)}"
        else:
            key = _swap_prefix(key, _DIFFUSERS_TOP)
        out[key] = value
    return out


def diffusers_to_longlive(state: Mapping[str, torch.Tensor], *, num_res_blocks: int) -> dict[str, torch.Tensor]:
    """diffusers `AutoencoderKLWan(is_residual=True)` keys -> ours."""
    top = {v: k for k, v in _DIFFUSERS_TOP.items()}
    side_table = {v: k for k, v in _DIFFUSERS_SIDE.items()}
    parts = {v: k for k, v in _DIFFUSERS_PARTS.items()}
    out = {}
    for key, value in state.items():
        m = _DIFFUSERS_BLOCK.match(key)
        if m:
            side, kind, i, j, resampler, rest = m.groups()
            j = _resampler_index(side, num_res_blocks) if resampler else int(j)
            key = f"{side}.{kind}samples.{i}.{kind}samples.{j}.{_swap_prefix(rest, parts)}"
        elif key.startswith(("encoder.", "decoder.")):
            side, rest = key.split(".", 1)
            key = f"{side}.{_swap_prefix(rest, side_table)}"
        else:
            key = _swap_prefix(key, top)
        out[key] = value
    return out


# ---- loading ----------------------------------------------------------------------------


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    """"longlive", "wan" or "diffusers" from the key names; ConfigError for anything else."""
    keys = list(state)
    if any(k.startswith(("quant_conv.", "post_quant_conv.")) or ".down_blocks." in k for k in keys):
        return "diffusers"
    if "encoder.conv1.weight" in state and "decoder.conv1.weight" in state:
        if any(".residual." in k for k in keys):
            return "wan"
        if any(".head_conv." in k for k in keys):
            return "longlive"
    shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
    raise ConfigError(f"the file does not look like a Wan2.2 VAE checkpoint (keys: {shown}); "
                      "pass the VAE weights (Wan2.2_VAE.pth or a diffusers vae/ folder), not the DiT")


def to_longlive(state: Mapping[str, torch.Tensor], fmt: str, *, num_res_blocks: int) -> dict[str, torch.Tensor]:
    """Convert a state dict in format `fmt` ("longlive", "wan", "diffusers") to our keys."""
    if fmt == "wan":
        return wan_to_longlive(state)
    if fmt == "diffusers":
        return diffusers_to_longlive(state, num_res_blocks=num_res_blocks)
    if fmt == "longlive":
        return dict(state)
    raise ConfigError(f"model.checkpoint_format={fmt!r} is not a VAE weight format; use one of {FORMATS}")


def load_vae_weights(vae: torch.nn.Module, path: str | os.PathLike, format: str = "auto", *,
                     where: str = "model.codec_checkpoint") -> str:
    """Load Wan, diffusers or our own VAE weights into `vae` strictly; return the format found.

    `path` is a file (.pth/.pt/.safetensors) or a directory of shards (a diffusers `vae/` folder).
    Any missing, unexpected or mis-shaped key raises one ConfigError.
    """
    if format not in FORMATS:
        raise ConfigError(f"{where}: format={format!r} is unknown; use one of {FORMATS}")
    state = read_state_dict(path, where=where)
    fmt = detect_format(state) if format == "auto" else format
    converted = to_longlive(state, fmt, num_res_blocks=vae.config.num_res_blocks)
    load_strict(vae, converted, what=f"VAE ({vae.config.name}) from {os.fspath(path)!r} as {fmt} format")
    log.info("loaded VAE weights from %s (%s format, %d tensors)", os.fspath(path), fmt, len(converted))
    return fmt
