"""Helpers of the reliability tests: experiment files, the CLI in-process, damaging tar shards."""
from __future__ import annotations

from pathlib import Path


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
