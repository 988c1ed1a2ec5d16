"""The attn_sink plugin: multi-shot attention sinks, shot RoPE offsets, re-cache on prompt switch,
live prompts and KV-cache-relative RoPE, wired to the core through its KV-policy and chunk hooks."""
from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import attrs

from longlive.config import MAX_FRAMES
from longlive.errors import ConfigError, PluginError
from longlive.registry import hookimpl
from longlive.structure import in_range

if TYPE_CHECKING:
    import torch

    from longlive.cache import CacheSpec
    from longlive.pipeline import GenerationState
    from longlive.prompts import ChunkPrompt
    from longlive_plugins.attn_sink.policy import SinkPolicy

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class AttnSinkConfig:
    """The [plugins.attn_sink] table. Frames are latent frames; defaults are LongLive 2.0's inference defaults.

    Neutral setting (the core's plain window, exactly): sink_frames = shot_sink_frames =
    rope_shift_frames = 0 with everything else off.
    """

    # global sink: the video's first frames
    sink_frames: int = attrs.field(default=8, validator=in_range(0, MAX_FRAMES))
    shot_sink_frames: int = attrs.field(default=8, validator=in_range(0, MAX_FRAMES))  # each shot's first frames
    # temporal RoPE offset per shot index
    rope_shift_frames: int = attrs.field(default=8, validator=in_range(0, MAX_FRAMES))
    clear_window_on_cut: bool = False  # a cut drops the previous shot from the cache (re-caching the cut chunk)
    recache_on_switch: bool = False  # re-run the window under the new prompt at a switch (LongLive 1.0)
    recache_sink: bool = False  # re-cache the sinks too at a switch
    scene_cut_prefix: str = ""  # text before the prompt of the first chunk of every later shot (conditioning only)
    relative_rope: bool = False  # positions relative to the visible window: bounded for any video length
    prompt_file: str | None = None  # live prompts: a file polled before each chunk (relative to the cwd)
    prompt_stdin: bool = False  # live prompts: one per line on stdin

    def __attrs_post_init__(self) -> None:
        if self.recache_sink and not self.recache_on_switch:
            raise ConfigError("recache_sink: true has no effect with recache_on_switch = false; "
                              "set recache_on_switch = true or remove recache_sink")
        if self.prompt_file is not None and not self.prompt_file.strip():
            raise ConfigError("prompt_file: \"\" names no file; give a path, or use prompt_stdin = true to read stdin")
        if self.prompt_file is not None and self.prompt_stdin:
            raise ConfigError("prompt_stdin: true together with prompt_file; choose one live prompt source")


def check_budget(config: AttnSinkConfig, *, frames_per_chunk: int, window_frames: int) -> None:
    """Sinks hold whole chunks and leave room for the chunk being generated in the window."""
    for key in ("sink_frames", "shot_sink_frames"):
        value = getattr(config, key)
        if value % frames_per_chunk:
            raise ConfigError(f"plugins.attn_sink.{key}: {value} is not a multiple of sampler.frames_per_chunk = "
                              f"{frames_per_chunk} (sinks hold whole chunks); try "
                              f"{round(value / frames_per_chunk) * frames_per_chunk}")
    total = config.sink_frames + config.shot_sink_frames + frames_per_chunk
    if total > window_frames:
        key = "shot_sink_frames" if config.shot_sink_frames else "sink_frames"
        raise ConfigError(f"plugins.attn_sink.{key}: sink_frames {config.sink_frames} + shot_sink_frames "
                          f"{config.shot_sink_frames} + the chunk being generated ({frames_per_chunk}) = {total} "
                          f"exceed sampler.window_frames = {window_frames}; lower the sinks or raise window_frames")


class AttnSink:
    """Global sink + shot sink + local window, shot RoPE offsets, re-cache on switches, live prompts."""

    Config = AttnSinkConfig

    def __init__(self, config: AttnSinkConfig) -> None:
        self.config = config
        self._latents: dict[int, torch.Tensor] = {}  # clean latents of cached chunks, for re-cache
        self._live = None  # a LivePrompt, made at the first chunk (never at validation time)

    @hookimpl
    def longlive_configure(self, experiment) -> None:
        s = experiment.sampler
        check_budget(self.config, frames_per_chunk=s.frames_per_chunk, window_frames=s.window_frames)

    @hookimpl
    def longlive_make_kv_policy(self, spec: CacheSpec) -> SinkPolicy:
        from longlive_plugins.attn_sink.policy import SinkPolicy

        c, fpc = self.config, spec.frames_per_chunk
        check_budget(c, frames_per_chunk=fpc, window_frames=spec.num_slots * fpc)
        self._latents.clear()  # a new video
        if self._live is not None:
            self._live.reset()
        log.info("attn_sink: %d slots of %d frames: sink %d, shot sink %d chunks; RoPE %s, shift %d frames per shot",
                 spec.num_slots, fpc, c.sink_frames // fpc, c.shot_sink_frames // fpc,
                 "relative" if c.relative_rope else "absolute", c.rope_shift_frames)
        return SinkPolicy(num_slots=spec.num_slots, frames_per_chunk=fpc, sink_chunks=c.sink_frames // fpc,
                          shot_sink_chunks=c.shot_sink_frames // fpc, rope_shift_frames=c.rope_shift_frames,
                          clear_window_on_cut=c.clear_window_on_cut, relative_rope=c.relative_rope)

    @hookimpl
    def longlive_next_prompt(self, chunk: ChunkPrompt) -> str | None:
        return self._live_prompt().resolve(chunk) if self._has_live_source else None

    @hookimpl
    def longlive_prompt_prefix(self, chunk: ChunkPrompt) -> str | None:
        """LongLive's convention: the scene-cut prefix on the first chunk of every later shot only."""
        if self.config.scene_cut_prefix and chunk.shot_start and chunk.shot_index > 0:
            return self.config.scene_cut_prefix
        return None

    @hookimpl
    def longlive_shot_start(self, shot_index: int, chunk_index: int, state: GenerationState) -> None:
        _policy(state).start_shot(shot_index, chunk_index)
        log.info("attn_sink: shot %d starts at chunk %d", shot_index, chunk_index)

    @hookimpl
    def longlive_prompt_switch(self, chunk_index: int, prompt: str, state: GenerationState) -> None:
        if not self.config.recache_on_switch:
            return
        from longlive_plugins.attn_sink.recache import recache_chunks

        plans = _policy(state).recache_plans(chunk_index, include_sinks=self.config.recache_sink)
        recache_chunks(state, prompt, plans, self._latents)
        log.info("attn_sink: prompt switch at chunk %d: re-cached chunks %s", chunk_index,
                 [p.chunk_index for p in plans])

    @hookimpl
    def longlive_chunk_done(self, index: int, latents: torch.Tensor, state: GenerationState) -> None:
        if self.config.recache_on_switch:
            self._latents[index] = latents
            cached = set(_policy(state).cached_chunks())
            for chunk in [c for c in self._latents if c not in cached]:
                del self._latents[chunk]

    @property
    def _has_live_source(self) -> bool:
        return self.config.prompt_file is not None or self.config.prompt_stdin

    def _live_prompt(self) -> Any:
        if self._live is None:
            from longlive_plugins.attn_sink.live import LivePrompt, PromptFile, PromptStream

            source = PromptFile(self.config.prompt_file) if self.config.prompt_file else PromptStream(sys.stdin)
            self._live = LivePrompt(source)
        return self._live


def _policy(state: GenerationState) -> SinkPolicy:
    from longlive_plugins.attn_sink.policy import SinkPolicy

    policy = state.cache.policy
    if not isinstance(policy, SinkPolicy):
        raise PluginError(f"attn_sink: the KV cache's policy is {type(policy).__name__}, not the plugin's SinkPolicy; "
                          "build the cache through the longlive_make_kv_policy hook")
    return policy
