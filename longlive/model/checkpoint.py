"""Reading weight files and loading them strictly, with one clear error on any mismatch.

Formats read: safetensors files, directories of safetensors shards (with or without an
`*.index.json`), and PyTorch pickles (`.pt`, `.pth`, `.bin`), always through
`torch.load(weights_only=True)`. Our own outputs are written as safetensors, atomically.

Host memory: safetensors are read lazily (`LazyTensors`: one tensor at a time, when the loader
copies it into the model) and pickles through `torch.load(mmap=True)`, so loading a checkpoint
into a model already placed on its device and dtype never holds a second copy of the weights.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Collection, Iterator, Mapping

import torch
from torch import nn

from longlive.errors import ConfigError

log = logging.getLogger(__name__)

_SAFETENSORS = (".safetensors",)
_PICKLES = (".pt", ".pth", ".bin", ".ckpt")


class LazyTensors(Mapping[str, torch.Tensor]):
    """The tensors of safetensors files by name, each read from disk when it is accessed."""

    def __init__(self, sources: Mapping[str, tuple[Path, str]]) -> None:
        self._sources = dict(sources)  # our name -> (file, the name inside the file)

    @classmethod
    def open(cls, files: list[Path]) -> LazyTensors:
        from safetensors import safe_open

        sources = {}
        for file in files:
            with safe_open(str(file), "pt") as f:
                sources.update({k: (file, k) for k in f.keys()})
        return cls(sources)

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        file, name = self._sources[key]
        with safe_open(str(file), "pt") as f:
            return f.get_tensor(name)

    def shape(self, key: str) -> tuple[int, ...]:
        from safetensors import safe_open

        file, name = self._sources[key]
        with safe_open(str(file), "pt") as f:
            return tuple(f.get_slice(name).get_shape())

    def renamed(self, rename: Callable[[str], str]) -> LazyTensors:
        return LazyTensors({rename(k): v for k, v in self._sources.items()})

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


def rename_keys(state: Mapping[str, torch.Tensor], rename: Callable[[str], str]) -> Mapping[str, torch.Tensor]:
    """`state` with every key renamed, without reading a lazy state's tensors."""
    if isinstance(state, LazyTensors):
        return state.renamed(rename)
    return {rename(k): v for k, v in state.items()}


def shape_of(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return state.shape(key) if isinstance(state, LazyTensors) else tuple(state[key].shape)


def read_state_dict(path: str | os.PathLike, *, where: str = "checkpoint") -> Mapping[str, torch.Tensor]:
    """The tensors of a weight file or shard directory (safetensors lazily, pickles memory-mapped).

    `where` names the config key the path came from, for error messages.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{where}: {str(path)!r} does not exist; give the path of a weight file or directory")
    if path.is_dir():
        safetensors = sorted(path.glob("*.safetensors"))
        if safetensors:
            return _open_safetensors(safetensors, where=where, what=f"directory {str(path)!r}")
        shards = sorted(p for p in path.iterdir() if p.suffix in _PICKLES)
        if not shards:
            raise ConfigError(f"{where}: directory {str(path)!r} holds no .safetensors or .pt/.pth/.bin files")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_state_dict(shard, where=where))
        return state
    if path.suffix in _SAFETENSORS:
        return _open_safetensors([path], where=where, what=repr(str(path)))
    if path.suffix in _PICKLES:
        import zipfile

        try:  # mmap needs the zip format; older torch.save files are read whole
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as e:
            raise ConfigError(f"{where}: {str(path)!r} {describe_load_error(e)}; only plain tensor state dicts "
                              f"(or safetensors files) are accepted") from None
        if not isinstance(obj, Mapping):
            raise ConfigError(f"{where}: {str(path)!r} holds a {type(obj).__name__}, not a state dict")
        return dict(obj)
    raise ConfigError(
        f"{where}: unknown weight file type {path.suffix!r} for {str(path)!r}; "
        f"use one of {_SAFETENSORS + _PICKLES} or a directory of shards"
    )


def _open_safetensors(files: list[Path], *, where: str, what: str) -> LazyTensors:
    try:
        return LazyTensors.open(files)
    except Exception as e:  # safetensors raises its own error types
        raise ConfigError(f"{where}: {what} is not a readable safetensors file ({e})") from e


def describe_load_error(e: Exception) -> str:
    """One line on why torch.load(weights_only=True) refused a file, without PyTorch's advice to load it
    unsafely (it would run the file's code)."""
    import pickle

    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if isinstance(e, pickle.UnpicklingError):
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), "unsupported objects")
        return f"holds pickled Python objects, not only tensors, and was refused ({detail[:200]})"
    return f"could not be read with torch.load(weights_only=True) ({type(e).__name__}: {(lines or [''])[0][:200]})"


def nonfinite_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of `state` that hold NaN or inf."""
    return [k for k, v in state.items() if v.is_floating_point()
            and not bool(torch.isfinite(v.float() if v.element_size() == 1 else v).all())]  # float8: no isfinite


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str,
                elsewhere: Collection[str] = ()) -> None:
    """Load `state` into `module`; any missing, unexpected or mis-shaped key is one ConfigError.

    A placed module (not on the meta device) receives the tensors one at a time, each converted
    to its parameter's dtype and device as it is copied: no second copy of the model exists.
    `what` names the weights in the message (e.g. "DiT from checkpoints/model_bf16.pt").
    `elsewhere`: keys of `module` that another loader fills (packed tensors, through their format).
    """
    elsewhere = set(elsewhere)
    own = {k: v for k, v in module.state_dict(keep_vars=True).items() if k not in elsewhere}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own) - elsewhere)
    mis_shaped = sorted(
        f"{k} {shape_of(state, k)} != {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if shape_of(state, k) != tuple(own[k].shape)
    )
    if missing or unexpected or mis_shaped:
        parts = []
        if mis_shaped:
            parts.append(f"{len(mis_shaped)} with the wrong shape ({_first(mis_shaped)})")
        if missing:
            parts.append(f"{len(missing)} missing ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
        hint = (
            "the checkpoint is for another preset; check model.preset"
            if mis_shaped
            else "the file is not in a format this loader knows; check model.checkpoint_format"
        )
        raise ConfigError(f"cannot load {what}: keys {'; '.join(parts)}; {hint}")
    if _on_meta(module):
        module.load_state_dict({k: state[k] for k in own}, strict=not elsewhere, assign=True)
        return
    with torch.no_grad():
        for name, target in own.items():
            target.copy_(state[name])


def save_safetensors_atomic(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                            metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file so that a crash never leaves a half-written file at `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp),
                  metadata=dict(metadata or {}))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _first(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... {len(keys) - n} more" if len(keys) > n else "")


def _on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())
