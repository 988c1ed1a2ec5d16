"""Training-state checkpoints: written atomically, read with torch.load(weights_only=True).

A checkpoint is one file holding plain types and tensors only: step, model, optimizer, LR
schedule, EMA, data position and RNG states (torch CPU and CUDA, numpy, Python `random`,
turned into tensors and ints so that weights_only loading accepts them).

Writing (`save_checkpoint`): serialize to a temporary file in the checkpoint directory, flush
and fsync it, move the current `last.pt` to `previous.pt` (when kept), then `os.replace` the
temporary file onto `last.pt` and fsync the directory. A crash at any point leaves `last.pt` or
`previous.pt` complete, and `load_checkpoint` falls back to `previous.pt` when `last.pt` is
missing or unreadable.

Only finite states are written: `save_checkpoint` refuses a state holding a NaN or inf tensor
(weights, optimizer moments, EMA) with `NonFiniteStateError`, so a diverged run cannot replace
the last good checkpoint; `load_checkpoint` treats a non-finite file (from an older version)
like an unreadable one. Stale temporaries of saves killed midway (`.last.pt.tmp-<pid>`) are
removed by `remove_stale_temporaries` when the next run starts in the directory.
"""
from __future__ import annotations

import errno
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from longlive.errors import ConfigError, LongLiveError

log = logging.getLogger(__name__)

LAST, PREVIOUS = "last.pt", "previous.pt"
FORMAT_VERSION = 1


class NonFiniteStateError(LongLiveError):
    """A training state holds NaN or inf values: it is not written."""


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Key paths of every floating-point tensor in a nested dict/list state with a NaN or inf."""
    if isinstance(state, torch.Tensor):
        bad = state.is_floating_point() and not bool(torch.isfinite(state).all())
        return [prefix or "<tensor>"] if bad else []
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    return [p for k, v in items for p in nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]


def _serialize(obj: Any, f: BinaryIO) -> None:
    """The serializer (a seam the tests replace with one that fails midway)."""
    torch.save(obj, f)


def save_checkpoint(state: dict, directory: str | os.PathLike, *, keep_previous: bool = True) -> Path:
    """Write `state` as `directory/last.pt` atomically (module docstring); returns its path."""
    bad = nonfinite_tensors(state)
    if bad:
        raise NonFiniteStateError(f"{len(bad)} tensors hold NaN or inf (e.g. {', '.join(bad[:3])})")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    last, tmp = directory / LAST, directory / f".{LAST}.tmp-{os.getpid()}"
    try:
        try:
            with open(tmp, "wb") as f:
                _serialize({"format_version": FORMAT_VERSION, **state}, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            if not _disk_full(e):
                raise
            free = shutil.disk_usage(directory).free / 2**20
            raise LongLiveError(f"checkpoint: the disk of {directory} is full ({free:.0f} MiB free) while saving "
                                f"step {state.get('step')}; {LAST} is unchanged; free space, then run again to "
                                f"resume") from e
        if keep_previous and last.exists():
            os.replace(last, directory / PREVIOUS)
        os.replace(tmp, last)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(directory)
    log.info("checkpoint: step %s -> %s", state.get("step"), last)
    return last


def load_checkpoint(directory: str | os.PathLike) -> dict | None:
    """The newest readable checkpoint in `directory` (last.pt, else previous.pt); None if there is none."""
    directory = Path(directory)
    errors = []
    for name in (LAST, PREVIOUS):
        path = directory / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file: try the previous one
            from longlive.model.checkpoint import describe_load_error

            log.warning("checkpoint %s %s; trying the previous one", path, describe_load_error(e))
            errors.append(f"{name}: {type(e).__name__}")
            continue
        if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
            errors.append(f"{name}: not a LongLive training checkpoint")
            continue
        bad = nonfinite_tensors(state)
        if bad:
            log.warning("checkpoint %s holds NaN or inf (%s); trying the previous one", path, ", ".join(bad[:3]))
            errors.append(f"{name}: {len(bad)} tensors hold NaN or inf")
            continue
        log.info("resuming from %s (step %d)", path, state["step"])
        return state
    if errors:
        raise ConfigError(f"resume: no readable checkpoint in {directory} ({'; '.join(errors)}); "
                          f"delete the folder to start over or point --run-dir elsewhere")
    return None


def _disk_full(e: BaseException) -> bool:
    """torch.save reports a full disk as "unexpected pos" (its zip writer) or as ENOSPC."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "unexpected pos" in str(e) or "No space left" in str(e)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of saves that were killed midway (`.last.pt.tmp-<pid>`); returns them.

    Called when a run starts in `directory`, before it saves: one run writes a directory at a time.
    """
    directory = Path(directory)
    stale = sorted(directory.glob(f".{LAST}.tmp-*")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.warning("removed %d temporary file(s) of interrupted checkpoint saves in %s", len(stale), directory)
    return stale


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- RNG states as weights_only-loadable values ----------------------------------------------


def rng_state() -> dict:
    """The global RNG states of this process (torch CPU, CUDA, numpy, Python random)."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
