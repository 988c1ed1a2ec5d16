"""Record per-chunk latent statistics during generation and write them as JSON.

A worked example of a third-party LongLive plugin: an attrs `Config` class validates the
`[plugins.latent_stats]` table, and two hook implementations receive core events. torch is
imported where it is used, so `longlive validate` and `longlive plugins` stay fast.
"""
from __future__ import annotations

import json
import logging
import os

from typing import TYPE_CHECKING

import attrs

from longlive.errors import ConfigError
from longlive.registry import hookimpl

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def _json_name(_instance, attribute, value: str) -> None:
    if not value.endswith(".json") or "/" in value:
        raise ConfigError(f"{attribute.name}: {value!r} must be a plain file name ending in .json")


@attrs.frozen(kw_only=True)
class LatentStatsConfig:
    """The [plugins.latent_stats] table."""

    output: str = attrs.field(default="latent_stats.json", validator=_json_name)
    every: int = attrs.field(default=1, validator=attrs.validators.ge(1))  # record every n-th chunk


class LatentStats:
    """Per-chunk mean and standard deviation of generated latents, written to the run directory."""

    Config = LatentStatsConfig

    def __init__(self, config: LatentStatsConfig) -> None:
        self.config = config
        self._chunks: list[tuple[int, torch.Tensor]] = []  # stats stay on the device until the end

    @hookimpl
    def longlive_chunk_done(self, index: int, latents: torch.Tensor) -> None:
        if index % self.config.every == 0:
            import torch

            x = latents.float()
            self._chunks.append((index, torch.stack([x.mean(), x.std()])))

    @hookimpl
    def longlive_run_end(self, run, result: dict) -> None:
        stats = [{"chunk": i, "mean": float(s[0]), "std": float(s[1])} for i, s in self._chunks]
        result["latent_stats"] = stats
        path = run.output_path(self.config.output)
        if path is not None and stats:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(stats, indent=2) + "\n")
            os.replace(tmp, path)
            log.info("latent_stats: %d chunks -> %s", len(stats), path)
        self._chunks.clear()
