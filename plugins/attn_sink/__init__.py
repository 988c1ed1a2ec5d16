"""attn_sink: multi-shot attention sinks, shot RoPE offsets, re-cache on prompt switch, live prompts and
KV-cache-relative RoPE (LongLive 2.0's sinks plus LongLive 1.0's interactive re-cache)."""
from __future__ import annotations

from longlive_plugins.attn_sink.plugin import AttnSink, AttnSinkConfig

__all__ = ["AttnSink", "AttnSinkConfig"]
