"""Resuming under a changed experiment: which keys may change without breaking exact resume.

Every checkpoint holds the resolved experiment it was trained under (TOML text). A resume
compares it with the current one: keys in RESUME_SAFE (when to stop, log, save, evaluate, where
to write, DDP or FSDP2) may change; any other change (lr, seed, ema_decay, data, plugins, ...)
would make the resumed run differ from an uninterrupted one, so it is an error naming the keys,
unless the run was started with `--allow-changed-resume`; then both experiments are kept in the
run directory (`experiment.toml` the new one, `experiment.step-<N>.toml` the one of steps 1..N).
A [train] key the saved experiment lacks (a checkpoint written before the key existed) is no change
while the current value is the key's default (new keys default to the behaviour before them).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from longlive.config import tomllib

RESUME_SAFE = frozenset({
    "run.name", "run.output_dir", "train.steps", "train.max_seconds", "train.log_every", "train.save_every",
    "train.keep_previous", "train.eval_every", "train.eval_frames", "train.eval_data", "train.export",
    "train.max_bad_samples",
    # how the same math is spread over the processes (replicated or sharded; the checkpoint format is
    # the same): changes only the summation order of the gradient reduction (train.fsdp_param_dtype,
    # which changes the compute dtype, is not safe)
    "train.data_parallel", "train.fsdp_shard",
})


def flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    """{"section.key": value} of a nested table (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def breaking_changes(saved_toml: str, current: dict) -> list[tuple[str, Any, Any]]:
    """[(key, saved value, current value)] of the changes that break exact resume (None: absent)."""
    old, new = flatten(tomllib.loads(saved_toml)), flatten(current)
    added = _train_defaults()
    return [(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if k not in RESUME_SAFE and old.get(k) != new.get(k)
            and not (k not in old and k in added and new.get(k) == added[k])]


def _train_defaults() -> dict[str, Any]:
    """{"train.<key>": default} of TrainConfig's plain (str, number, bool) defaults."""
    import attrs

    from longlive.train.config import TrainConfig

    return {f"train.{f.name}": f.default for f in attrs.fields(TrainConfig)
            if isinstance(f.default, (str, int, float, bool))}


def describe(changes: list[tuple[str, Any, Any]], limit: int = 6) -> str:
    parts = [f"{k} {_short(a)} -> {_short(b)}" for k, a, b in changes[:limit]]
    return ", ".join(parts) + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def _short(value: Any) -> str:
    text = "(absent)" if value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
