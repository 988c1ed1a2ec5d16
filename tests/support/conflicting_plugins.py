"""Ad-hoc plugins that claim one role twice (for the conflict tests)."""
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


class PromptA:
    """Claims the live prompt source role."""

    Config = NoConfig

    def __init__(self, config: NoConfig) -> None:
        self.config = config

    @hookimpl
    def longlive_next_prompt(self, chunk):
        return None


class PromptB(PromptA):
    """Claims the live prompt source role too."""

    @hookimpl
    def longlive_next_prompt(self, chunk):
        return None


no_such_object = 3
