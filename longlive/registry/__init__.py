"""Hook markers for LongLive plugins: decorate implementations with `@hookimpl`."""
from __future__ import annotations

import pluggy

PROJECT = "longlive"
ENTRY_POINT_GROUP = "longlive.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["ENTRY_POINT_GROUP", "PROJECT", "hookimpl", "hookspec"]
