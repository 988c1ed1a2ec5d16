"""Shard manifests: the sample count of every shard, written with the shards, checked by training.

`manifest.json` lies in the shards' folder: {"format": "longlive-shards/1", "shards": {file name:
samples}}. A writer removes the entries of the shards it is about to write and adds them once all
are complete (`update_manifest`, atomic), so a writer killed midway leaves shards the manifest
does not list. `check_counts` compares what the shard index found with the manifest: a shard holding
fewer samples than listed (truncated, or a damaged tar header that ends reading early), a shard
missing from the manifest and a pattern that leaves out listed shards are reported with the
numbers; lost samples count against the same limit as corrupt ones (train.max_bad_samples).
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from longlive.errors import ConfigError

log = logging.getLogger(__name__)

MANIFEST, FORMAT = "manifest.json", "longlive-shards/1"


def read_manifest(directory: str | os.PathLike) -> dict[str, int] | None:
    """{shard file name: samples} of `directory`'s manifest; None when it has none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
        return {str(k): int(v) for k, v in data["shards"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path}: not a readable shard manifest ({e}); delete it and rewrite the shards") from None


def update_manifest(directory: str | os.PathLike, *, remove: Sequence[str] = (),
                    add: Mapping[str, int] | None = None) -> None:
    """Drop the entries `remove` and set those of `add`, rewriting the manifest atomically."""
    directory = Path(directory)
    shards = read_manifest(directory) or {}
    for name in remove:
        shards.pop(name, None)
    shards.update(add or {})
    text = json.dumps({"format": FORMAT, "shards": dict(sorted(shards.items()))}, indent=1) + "\n"
    tmp = directory / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)


def check_counts(files: Sequence[str], found: Counter, *, max_missing: int, where: str) -> int:
    """Compare the samples `found` per shard file with the manifests; returns the samples missing.

    More than `max_missing` missing samples raise a ConfigError; fewer are logged as warnings.
    """
    by_dir: dict[Path, list[str]] = {}
    for f in files:
        by_dir.setdefault(Path(f).resolve().parent, []).append(f)
    missing, losses = 0, []
    for directory, paths in by_dir.items():
        listed = read_manifest(directory)
        if listed is None:
            log.warning("%s: no %s in %s: the sample counts of its %d shards cannot be checked",
                        where, MANIFEST, directory, len(paths))
            continue
        unlisted = [p for p in paths if Path(p).name not in listed]
        if unlisted:
            log.warning("%s: %d of the %d shards (%d samples) in %s are not listed in its %s: the run that wrote "
                        "them did not finish, so shards may be missing; e.g. %s", where, len(unlisted), len(paths),
                        sum(found[p] for p in unlisted), directory, MANIFEST, Path(unlisted[0]).name)
        for path in paths:
            name = Path(path).name
            if name in listed and found[path] < listed[name]:
                missing += listed[name] - found[path]
                losses.append(f"{path} holds {found[path]} of the {listed[name]} samples its manifest lists")
        unused = sorted(set(listed) - {Path(p).name for p in paths})
        if unused:
            used = sum(listed[Path(p).name] for p in paths if Path(p).name in listed)
            log.warning("%s: the pattern uses %d of the %d shards listed in %s (%d of %d samples); not used: %s",
                        where, len(paths), len(listed), directory / MANIFEST, used, sum(listed.values()),
                        ", ".join(unused[:5]) + (", ..." if len(unused) > 5 else ""))
    for loss in losses:
        log.warning("%s: %s", where, loss)
    if missing > max_missing:
        raise ConfigError(f"{where}: {missing} samples are missing from the shards ({losses[0]}"
                          f"{f'; and {len(losses) - 1} more shards' if len(losses) > 1 else ''}); regenerate the "
                          f"shards, or raise train.max_bad_samples (now {max_missing}) to train without them")
    return missing
