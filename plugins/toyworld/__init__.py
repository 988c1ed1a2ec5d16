"""The toy world: a procedural shapes-video world that makes LongLive runnable on a CPU.

`ToyWorld` (plugin.py) is the plugin the `longlive.plugins` entry point names; the other
modules are plain library code (world.py, codec.py, text.py, toybench.py, shards.py).
"""
from __future__ import annotations

from longlive_plugins.toyworld.plugin import ToyWorld, ToyWorldConfig

__all__ = ["ToyWorld", "ToyWorldConfig"]
