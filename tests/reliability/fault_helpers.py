"""Helpers of the reliability tests: experiment files, the CLI in-process, damaging tar shards."""
from __future__ import annotations

from pathlib import Path

# A tiny generate experiment (toy world, debug DiT, CPU) and its train and bench variants.
BASE = {
    "run": {"name": "v", "task": "generate", "device": "cpu", "plugins": ["toyworld", "attn_sink"]},
    "model": {"preset": "debug", "codec": "toy-patch", "text_encoder": "toy-words"},
    "sampler": {"height": 32, "width": 32, "num_frames": 4, "frames_per_chunk": 2, "window_frames": 4},
    "generate": {"prompt": "a red circle moves left on a dark blue background"},
    "plugins": {"toyworld": {"size": 32}, "attn_sink": {"sink_frames": 0, "shot_sink_frames": 0}},
}
TRAIN = {**BASE, "run": {**BASE["run"], "task": "train"}, "train": {"data": "shards/*.tar"}}
BENCH = {**BASE, "run": {**BASE["run"], "task": "bench"}, "bench": {}}


def write_experiment(directory: Path, table: dict, name: str = "exp.toml") -> Path:
    """`table` as a TOML experiment file in `directory`."""
    from longlive.config import dumps_toml

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(dumps_toml(table), encoding="utf-8")
    return path


def cli(*args: str) -> int:
    """`python -m longlive ARGS` in this process; returns the exit code."""
    from longlive.cli import main

    return main([str(a) for a in args])


def member_offsets(shard: str | Path) -> dict[str, tuple[int, int]]:
    """{member name: (data offset, size)} of a tar shard."""
    import tarfile

    with tarfile.open(shard, "r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar}


def overwrite(path: str | Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
