"""LoRA adapters over any linear (high-precision or quantized), merging, and adapter files.

A LoRA adapter adds a low-rank update to a frozen linear: y = base(x) + (alpha / r) * B(A(x)),
A [r, in] (Kaiming-uniform init, as PEFT), B [out, r] (zeros, so a new adapter changes nothing).
Parameter names follow PEFT (`<fqn>.lora_A.weight`, `<fqn>.lora_B.weight`), so LongLive 2.0's
adapters (`generator_lora` / `critic_lora` entries of its checkpoints, r128 / alpha128, written by
`get_peft_model_state_dict`) load after stripping PEFT's and the training wrappers' prefixes.

Order (LongLive 2.0 §5.6; longlive/registry/hookspecs.py):
- inference: the adapter is merged into the high-precision weights (W += alpha/r * B A), then the
  model is quantized: the served weights are Q(W + dW);
- training: the base is quantized and frozen first, then trainable BF16/FP32 adapters wrap the
  quantized linears: training sees Q(W) + dW. Checkpoints and exports hold the adapters only.

This lives in the core, not in longlive/quant/: it works over any linear and any format (and
without one), and quantization never needs it.
"""
from __future__ import annotations

import logging
import math
import os
import re
from typing import Any, Mapping

import torch
from torch import nn

from longlive.errors import ConfigError
from longlive.quant.format import is_quantized

log = logging.getLogger(__name__)

ADAPTER_KEY = re.compile(r"^(.+)\.lora_([AB])\.weight$")
_PEFT_PREFIXES = ("base_model.model.",)  # PEFT's wrapper (get_peft_model_state_dict keeps it)
_ENTRIES = {"generator": "generator_lora", "critic": "critic_lora", "teacher": "generator_lora"}


class LoRALinear(nn.Module):
    """`base` (frozen, any linear-like module with in/out_features) plus a trainable low-rank update."""

    def __init__(self, base: nn.Module, *, rank: int, alpha: float, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = rank, float(alpha)
        device = next(base.parameters(), torch.empty(0)).device
        if device.type == "meta" or any(b.is_meta for b in base.buffers()):
            device = torch.device("meta")
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=device, dtype=dtype)
        if device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype))) * self.scaling
        return self.base(x) + update.to(x.dtype)

    def delta(self) -> torch.Tensor:
        """The update alpha/r * B A [out, in] in fp32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def merged(self) -> nn.Linear:
        """The base with the update folded in (base must be an nn.Linear: merge happens before quantizing)."""
        if not isinstance(self.base, nn.Linear):
            raise ConfigError(f"cannot merge a LoRA adapter into a {type(self.base).__name__}: merge before "
                              f"quantizing (the inference order), or keep the adapter unmerged")
        with torch.no_grad():
            w = self.base.weight
            w.copy_((w.float() + self.delta()).to(w.dtype))
        return self.base


# ---- attaching, merging, state dicts ---------------------------------------------------------


def adapter_targets(model: nn.Module) -> list[str]:
    """LongLive's LoRA targets: every linear (plain or converted by a format) inside the DiT blocks."""
    return [fqn for fqn, m in model.named_modules()
            if fqn.startswith("blocks.") and (isinstance(m, nn.Linear) or is_quantized(m))
            and ".lora_" not in fqn and not fqn.endswith(".base")]


def attach(model: nn.Module, *, rank: int, alpha: float, targets: list[str] | None = None,
           dtype: torch.dtype = torch.float32) -> list[str]:
    """Wrap the target linears of `model` in LoRALinear (in place); returns their names."""
    targets = adapter_targets(model) if targets is None else targets
    for fqn in targets:
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank=rank, alpha=alpha, dtype=dtype))
    log.info("LoRA: %d adapters, rank %d, alpha %g", len(targets), rank, alpha)
    return targets


def merge(model: nn.Module) -> int:
    """Fold every LoRALinear of `model` into its base (in place); returns how many."""
    wrapped = [fqn for fqn, m in model.named_modules() if isinstance(m, LoRALinear)]
    for fqn in wrapped:
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, getattr(parent, child).merged())
    return len(wrapped)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters only: `<fqn>.lora_A.weight`, `<fqn>.lora_B.weight` (PEFT's names without its prefix)."""
    return {k: v for k, v in model.state_dict().items() if ADAPTER_KEY.match(k)}


def has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def normalize_adapter_keys(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """PEFT / LongLive adapter keys -> ours: drop wrappers, PEFT's `base_model.model.`, the wrapper
    model's `model.`, and PEFT's adapter name in `lora_A.default.weight`; non-adapter keys are dropped."""
    from longlive.model.convert import strip_wrappers

    out = {}
    for key, value in strip_wrappers({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}).items():
        key = re.sub(r"\.lora_([AB])\.[^.]+\.weight$", r".lora_\1.weight", key)
        for prefix in _PEFT_PREFIXES:
            key = key.removeprefix(prefix)
        key = key.removeprefix("model.")
        if ADAPTER_KEY.match(key):
            out[key] = value
    return out


def read_adapters(path: str | os.PathLike, *, role: str = "generator",
                  where: str = "model.lora") -> tuple[dict[str, torch.Tensor], int, float]:
    """(adapter state with our keys, rank, alpha) from our safetensors or a LongLive checkpoint.

    A LongLive `.pt` holds the adapter under `generator_lora` (`critic_lora` for the critic);
    alpha is not stored there and LongLive trains with alpha = rank, so alpha = rank unless the
    file records `lora_alpha` (our safetensors do).
    """
    from longlive.model.checkpoint import read_state_dict

    raw = read_state_dict(path, where=where)
    entry = _ENTRIES.get(role, "generator_lora")
    if isinstance(raw.get(entry), Mapping):
        raw = raw[entry]
    state = normalize_adapter_keys(raw)
    if not state:
        raise ConfigError(f"{where}: {os.fspath(path)!r} holds no LoRA adapter (no '...lora_A.weight' keys, "
                          f"no {entry!r} entry)")
    a_keys = [k for k in state if k.endswith("lora_A.weight")]
    ranks = {state[k].shape[0] for k in a_keys}
    if len(ranks) != 1 or len(a_keys) * 2 != len(state):
        raise ConfigError(f"{where}: {os.fspath(path)!r} has inconsistent adapters (ranks {sorted(ranks)}, "
                          f"{len(a_keys)} A and {len(state) - len(a_keys)} B matrices)")
    rank = ranks.pop()
    alpha = float(_metadata(path).get("lora_alpha", rank))
    return state, rank, alpha


def save_adapters(model: nn.Module, path: str | os.PathLike, *, state: Mapping[str, torch.Tensor] | None = None,
                  metadata: Mapping[str, str] = ()) -> None:
    """Adapter-only safetensors (rank and alpha in the metadata); `state` overrides the live adapters (EMA)."""
    from longlive.model.checkpoint import save_safetensors_atomic

    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise ConfigError("save_adapters: the model has no LoRA adapters")
    state = adapter_state_dict(model) if state is None else state
    save_safetensors_atomic(state, path, metadata={"lora_rank": str(layers[0].rank),
                                                   "lora_alpha": str(layers[0].alpha), **dict(metadata)})


def load_adapters(model: nn.Module, state: Mapping[str, torch.Tensor], *, where: str = "model.lora") -> None:
    """Load adapter weights into the attached adapters; any missing or unexpected adapter is one ConfigError."""
    own = adapter_state_dict(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        raise ConfigError(f"{where}: adapters do not fit the model: {len(missing)} missing {missing[:2]}, "
                          f"{len(unexpected)} unexpected {unexpected[:2]}, {len(shapes)} mis-shaped {shapes[:2]}")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)


def merge_adapters(model: nn.Module, state: Mapping[str, torch.Tensor], *, rank: int, alpha: float,
                   where: str = "model.lora") -> int:
    """Inference: W += alpha/r * B A for every adapter in `state` (the linears must be unquantized)."""
    targets = sorted({ADAPTER_KEY.match(k)[1] for k in state})
    attach(model, rank=rank, alpha=alpha, targets=_existing(model, targets, where))
    load_adapters(model, state, where=where)
    return merge(model)


def _existing(model: nn.Module, targets: list[str], where: str) -> list[str]:
    names = dict(model.named_modules())
    bad = [t for t in targets if t not in names]
    if bad:
        raise ConfigError(f"{where}: the adapter targets modules the model does not have ({bad[:3]}); "
                          f"it was trained for another model.preset")
    return targets


def _metadata(path: str | os.PathLike) -> dict[str, str]:
    if not os.fspath(path).endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    with safe_open(os.fspath(path), "pt") as f:
        return dict(f.metadata() or {})


def check_student_steps(path: str | os.PathLike, steps: Any) -> None:
    """A distilled student records its sampler step count ("sampler_steps", plugins/dmd): warn when
    sampler.steps differs (a 2-step student run at 4 steps, say)."""
    recorded = _metadata(path).get("sampler_steps")
    if recorded is None:
        return
    if str(steps) != recorded:
        log.warning("model.lora: %s was distilled for %s sampler steps (%s); sampler.steps is %s",
                    os.fspath(path), recorded, _metadata(path).get("sampler", "?"), steps)
    else:
        log.info("model.lora: a %s-step student", recorded)


# ---- the core's longlive_load_adapters -------------------------------------------------------


def adapters_for_role(model: nn.Module, *, role: str, training: bool, run: Any) -> None:
    """`[model] lora` and `train.lora_rank`: merge for inference; attach trainable adapters for training."""
    path = run.experiment.model.lora if role == "generator" else None
    rank = getattr(run.task_config, "lora_rank", 0) if training else 0
    if not training:
        if path is not None:
            state, r, alpha = read_adapters(path, role=role)
            n = merge_adapters(model, state, rank=r, alpha=alpha)
            log.info("LoRA %s: merged %d adapters (rank %d, alpha %g) from %s", role, n, r, alpha, path)
            check_student_steps(path, run.experiment.sampler.steps)
        return
    if rank == 0:
        if path is not None:
            raise ConfigError("model.lora: training with an adapter needs train.lora_rank > 0 "
                              "(or merge it into the weights you train from)")
        return
    alpha = run.task_config.lora_alpha if run.task_config.lora_alpha is not None else float(rank)
    attach(model, rank=rank, alpha=alpha)
    if path is not None:
        state, r, _ = read_adapters(path, role=role)
        if r != rank:
            raise ConfigError(f"model.lora: the adapter has rank {r} but train.lora_rank = {rank}; make them equal")
        load_adapters(model, state)
