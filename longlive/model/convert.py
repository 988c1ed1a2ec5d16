"""DiT checkpoint key maps and the loader: LongLive `model_bf16.pt`, original Wan2.2 shards, diffusers.

Our parameter names are the original Wan names, so:
- "wan":       original Wan2.2 `WanModel` keys (sharded safetensors): identity.
- "longlive":  LongLive / Self-Forcing generator keys: the same under a `model.` prefix,
               possibly with training wrappers (`_fsdp_wrapped_module.`, `_orig_mod.`,
               `_checkpoint_wrapped_module.`, a leading DDP `module.`), possibly nested under a
               `generator` (or `generator_ema`) entry.
- "diffusers": `WanTransformer3DModel` keys, renamed by the table below (diffusers also swaps
               the names norm2/norm3: its affine cross-attention norm is `norm2`).
"""
from __future__ import annotations

import logging
import os
import re
from typing import Mapping

import torch
from torch import nn

from longlive.config import CHECKPOINT_FORMATS
from longlive.errors import ConfigError
from longlive.model.checkpoint import LazyTensors, load_strict, nonfinite_keys, read_state_dict, rename_keys

log = logging.getLogger(__name__)

FORMATS = CHECKPOINT_FORMATS  # one list: the [model] schema's
_WRAPPERS = ("_fsdp_wrapped_module.", "_orig_mod.", "_checkpoint_wrapped_module.")
_CONTAINERS = ("generator", "state_dict", "model")  # nested entries a training checkpoint may hold

# ours (= Wan) -> diffusers, for module paths outside the blocks ...
_TOP_TO_DIFFUSERS = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
}
# ... and inside `blocks.<i>.`
_BLOCK_TO_DIFFUSERS = {
    "modulation": "scale_shift_table",
    "norm3": "norm2",  # the affine cross-attention norm
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    **{f"{ours}.{p}": f"{theirs}.{q}"
       for ours, theirs in (("self_attn", "attn1"), ("cross_attn", "attn2"))
       for p, q in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"),
                    ("norm_q", "norm_q"), ("norm_k", "norm_k"))},
}
_TOP_FROM_DIFFUSERS = {v: k for k, v in _TOP_TO_DIFFUSERS.items()}
_BLOCK_FROM_DIFFUSERS = {v: k for k, v in _BLOCK_TO_DIFFUSERS.items()}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _rename(name: str, table: Mapping[str, str]) -> str:
    """Replace the longest module-path prefix of `name` found in `table`; unknown names are kept."""
    for prefix in sorted(table, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return table[prefix] + name[len(prefix):]
    return name


def _rename_keys(state: Mapping[str, torch.Tensor], top: Mapping[str, str],
                 block: Mapping[str, str]) -> Mapping[str, torch.Tensor]:
    def rename(key: str) -> str:
        m = _BLOCK_KEY.match(key)
        return f"blocks.{m[1]}.{_rename(m[2], block)}" if m else _rename(key, top)

    return rename_keys(state, rename)


def ours_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (= original Wan) keys -> diffusers `WanTransformer3DModel` keys."""
    return _rename_keys(state, _TOP_TO_DIFFUSERS, _BLOCK_TO_DIFFUSERS)


def diffusers_to_ours(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `WanTransformer3DModel` keys -> ours (= original Wan)."""
    return _rename_keys(state, _TOP_FROM_DIFFUSERS, _BLOCK_FROM_DIFFUSERS)


def strip_wrappers(state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """Drop FSDP / torch.compile / activation-checkpoint wrapper names and a leading DDP `module.`."""
    def rename(key: str) -> str:
        for wrapper in _WRAPPERS:
            key = key.replace(wrapper, "")
        return key.removeprefix("module.")

    return rename_keys(state, rename)


def unnest(state: Mapping[str, object], *, ema: bool = False) -> Mapping[str, object]:
    """The tensor dict inside a training checkpoint ({"generator": {...}, ...}); `ema` picks `generator_ema`."""
    names = ("generator_ema",) if ema else _CONTAINERS
    for name in names:
        inner = state.get(name)
        if isinstance(inner, Mapping):
            return inner
    if ema:
        raise ConfigError(f"checkpoint has no 'generator_ema' entry (top-level keys: {sorted(state)[:5]})")
    return state


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    """"diffusers", "longlive" or "wan" from the key names (after strip_wrappers)."""
    keys = list(state)
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys):
        return "diffusers"
    if any(k.startswith("model.") for k in keys):
        return "longlive"
    return "wan"


def to_ours(state: Mapping[str, torch.Tensor], format: str = "auto") -> tuple[Mapping[str, torch.Tensor], str]:
    """Rename a DiT state dict of `format` to our keys; returns (state, the format used)."""
    if format not in FORMATS:
        raise ConfigError(f"model.checkpoint_format={format!r} is unknown; use one of {list(FORMATS)}")
    state = strip_wrappers(state)
    fmt = detect_format(state) if format == "auto" else format
    if fmt == "diffusers":
        return diffusers_to_ours(state), fmt
    if fmt == "longlive":
        return rename_keys(state, lambda k: k.removeprefix("model.")), fmt
    return state, fmt


def load_dit_state(model: nn.Module, state: Mapping[str, torch.Tensor], format: str = "auto", *,
                   what: str = "DiT weights") -> str:
    """Load a DiT state dict of `format` strictly into `model` (a meta model takes the tensors as they are).

    Any missing, unexpected or mis-shaped key is one ConfigError. Returns the format used. Modules
    converted for a packed checkpoint (longlive/quant/packed.py) get their packed tensors through
    their format.
    """
    from longlive.quant.packed import load_packed_modules, split_packed_state

    ours, fmt = to_ours(state, format)
    packed, packed_keys = split_packed_state(model, ours)
    load_strict(model, ours, what=f"{what} ({fmt} format)", elsewhere=packed_keys)
    load_packed_modules(model, packed)
    return fmt


def dit_checkpoint_keys(path: str | os.PathLike, format: str = "auto", *, where: str = "model.checkpoint") -> list[str]:
    """The tensor names of a DiT checkpoint in our naming, without reading the tensors (safetensors
    lazily, pickles memory-mapped)."""
    return list(to_ours(unnest(read_state_dict(path, where=where)), format)[0])


def _check_prediction(model: nn.Module, path: str | os.PathLike, where: str) -> None:
    """A safetensors export records what its head predicts; it must match the preset's."""
    if not os.fspath(path).endswith(".safetensors") or not os.path.isfile(path):
        return
    from safetensors import safe_open

    with safe_open(os.fspath(path), "pt") as f:
        saved = (f.metadata() or {}).get("prediction")
    expected = model.config.prediction
    if saved is not None and saved != expected:
        raise ConfigError(f"{where}: {os.fspath(path)!r} was trained with prediction={saved!r} but DiT preset "
                          f"{model.config.name!r} has prediction={expected!r}; use a preset with prediction={saved!r}")


def load_dit_weights(model: nn.Module, path: str | os.PathLike, format: str = "auto", *,
                     where: str = "model.checkpoint", ema: bool = False) -> str:
    """Read a DiT checkpoint (file or shard directory) and load it strictly; returns the format used."""
    state = unnest(read_state_dict(path, where=where), ema=ema)
    bad = [] if isinstance(state, LazyTensors) else [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"{where}: {str(path)!r} holds non-tensor entries ({bad[:3]}); it is not a DiT state dict")
    _check_prediction(model, path, where)
    fmt = load_dit_state(model, state, format, what=f"DiT from {os.fspath(path)}")
    bad = nonfinite_keys(model.state_dict())  # checked where the weights now live: no second read of the file
    if bad:
        raise ConfigError(f"{where}: {str(path)!r} holds NaN or inf in {len(bad)} tensors (e.g. {bad[0]}); these "
                          f"weights cannot generate (a diverged training run?); use an earlier checkpoint")
    log.info("loaded DiT weights from %s (%s format, %d tensors)", os.fspath(path), fmt, len(state))
    return fmt
