"""Two ad-hoc plugins that both claim the KV storage role (for the conflict test)."""
from __future__ import annotations

import attrs

from longlive.registry import hookimpl


@attrs.frozen
class NoConfig:
    pass


class StorageA:
    """Claims the KV storage role."""

    Config = NoConfig

    def __init__(self, config: NoConfig) -> None:
        self.config = config

    @hookimpl
    def longlive_make_kv_storage(self, spec, run):
        return None


class StorageB(StorageA):
    """Claims the KV storage role too."""

    @hookimpl
    def longlive_make_kv_storage(self, spec, run):
        return None


no_such_object = 3
