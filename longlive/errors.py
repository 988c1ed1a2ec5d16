"""The three error classes every part of LongLive raises."""
from __future__ import annotations


class LongLiveError(Exception):
    """Base class of all LongLive errors."""


class ConfigError(LongLiveError):
    """A problem the user fixes in the experiment TOML, a --set override or an input file.

    The CLI prints it as one line, without a traceback, and exits with code 2.
    """


class PluginError(LongLiveError):
    """A plugin failed to load or broke a hook contract."""
