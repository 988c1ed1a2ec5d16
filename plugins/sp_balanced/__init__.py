"""sp_balanced: sequence parallelism. Part 1 (this package): Ulysses SP inference, the
sequence-layout role (`ulysses.py`) and the bytes its collectives move (`traffic.py`); part 2
(issue #18) adds Balanced SP training. Importing it loads nothing heavy."""
from __future__ import annotations

from longlive_plugins.sp_balanced.plugin import SPBalanced, SPBalancedConfig

__all__ = ["SPBalanced", "SPBalancedConfig"]
