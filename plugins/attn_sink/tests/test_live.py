"""Live prompts (a polled file, stdin) become prompt-switch events; scene-cut prefixes are conditioning only."""
from __future__ import annotations

import io
import os
import time

import torch

from longlive.cache import KVCache
from longlive.prompts import PromptScript, Shot, Switch, chunk_prompts
from longlive.registry import hookimpl
from longlive_plugins.attn_sink import AttnSink, AttnSinkConfig
from longlive_plugins.attn_sink.live import LivePrompt, PromptStream
from longlive_plugins.attn_sink.tests.helpers import FPC, chunk_noise, make_loop, make_spec


class Recorder:
    """Records the events the chunk loop emits, and may run an action after a chunk."""

    def __init__(self, after_chunk=None) -> None:
        self.switches: list[tuple[int, str]] = []
        self.prompts: list[str] = []
        self.after_chunk = after_chunk or {}

    @hookimpl
    def longlive_prompt_switch(self, chunk_index, prompt):
        self.switches.append((chunk_index, prompt))

    @hookimpl
    def longlive_chunk_done(self, index, state):
        self.prompts.append(state.prompt)
        if index in self.after_chunk:
            self.after_chunk[index]()


def _run(model, config: AttnSinkConfig, script: PromptScript, recorder: Recorder, between=None) -> AttnSink:
    plugin = AttnSink(config)
    spec = make_spec(model, 4)
    loop = make_loop(model, KVCache(spec, policy=plugin.longlive_make_kv_policy(spec=spec)), plugin, recorder)
    with torch.no_grad():
        for chunk in chunk_prompts(script, num_frames=script.total_frames, frames_per_chunk=FPC):
            if between and chunk.index in between:
                between[chunk.index]()
            loop.step(chunk, chunk_noise(chunk.index))
    return plugin


def _small(**kw) -> AttnSinkConfig:
    """Sinks of one chunk each, fitting the 4-chunk window of these tests."""
    return AttnSinkConfig(sink_frames=FPC, shot_sink_frames=FPC, rope_shift_frames=FPC, **kw)


def _write(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_prompt_file_changed_between_chunks_is_a_switch_at_the_next_chunk(model, tmp_path):
    path = tmp_path / "prompt.txt"
    config = AttnSinkConfig(sink_frames=FPC, shot_sink_frames=0, prompt_file=str(path), recache_on_switch=True)
    script = PromptScript(shot=(Shot(prompt="scheduled", frames=6 * FPC),))
    rec = Recorder(after_chunk={3: lambda: _write(path, "  from a hook\n")})  # written by a hook after chunk 3
    _run(model, config, script, rec, between={2: lambda: _write(path, "typed live\n")})  # and between chunks 1, 2
    assert rec.switches == [(2, "typed live"), (4, "from a hook")]
    assert rec.prompts == ["scheduled", "scheduled", "typed live", "typed live", "from a hook", "from a hook"]


def test_live_prompt_at_the_first_chunk_and_unchanged_file_are_no_switch(model, tmp_path):
    path = tmp_path / "prompt.txt"
    _write(path, "already there")
    rec = Recorder(after_chunk={1: lambda: _write(path, "already there")})  # same text again: no event
    _run(model, _small(prompt_file=str(path)), PromptScript(shot=(Shot(prompt="s", frames=3 * FPC),)), rec)
    assert rec.switches == [] and rec.prompts == ["already there"] * 3


def test_scripted_events_beat_an_older_live_prompt(tmp_path):
    class Source:
        def __init__(self):
            self.queue = []

        def poll(self):
            return self.queue.pop(0) if self.queue else None

    source = Source()
    live = LivePrompt(source)
    script = PromptScript(shot=(Shot(prompt="a", frames=4, switches=(Switch(at_frame=2, prompt="b"),)),
                                Shot(prompt="c", frames=4)))
    chunks = chunk_prompts(script, num_frames=8, frames_per_chunk=1)
    source.queue.append("live")
    got = [live.resolve(chunks[0]), live.resolve(chunks[1]), live.resolve(chunks[2]), live.resolve(chunks[3])]
    assert got == ["live", "live", None, None]  # the scripted switch at chunk 2 is newer than the live prompt
    source.queue.append("live again")
    assert live.resolve(chunks[4]) == "live again"  # a live prompt at a shot start applies to the new shot
    assert live.resolve(chunks[5]) == "live again"


def test_stdin_lines_become_prompts():
    r, w = os.pipe()
    with os.fdopen(r, "r") as reader, os.fdopen(w, "w") as writer:
        stream = PromptStream(reader)
        assert stream.poll() is None
        writer.write("first prompt\n\nsecond   prompt\n")
        writer.flush()
        deadline = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < deadline:
            got = stream.poll()
            time.sleep(0.01)
        if got == "first prompt":  # the reader thread may have queued only the first line so far
            time.sleep(0.1)
            got = stream.poll() or got
        assert got == "second prompt"
    assert PromptStream(io.StringIO("")).poll() is None


def test_scene_cut_prefix_is_on_the_first_chunk_of_each_later_shot_only(model):
    """LongLive's convention (its data loaders and its pipeline's cut detection): "The scene
    transitions. " conditions the first chunk of every shot after the first, and no other chunk;
    the prefix is conditioning only, so it never looks like a prompt switch."""
    later = Shot(prompt="two", frames=3 * FPC, switches=(Switch(at_frame=2 * FPC, prompt="three"),))
    script = PromptScript(shot=(Shot(prompt="one", frames=2 * FPC), later, Shot(prompt="four", frames=2 * FPC)))
    rec = Recorder()
    plugin = AttnSink(_small(scene_cut_prefix="The scene transitions. "))
    spec = make_spec(model, 4)
    loop = make_loop(model, KVCache(spec, policy=plugin.longlive_make_kv_policy(spec=spec)), plugin, rec)
    encoded: list[str] = []
    encode = loop.state.encode_text
    loop.state.encode_text = lambda prompts: encoded.append(prompts[0]) or encode(prompts)
    conditioning = []
    with torch.no_grad():
        for chunk in chunk_prompts(script, num_frames=script.total_frames, frames_per_chunk=FPC):
            loop.step(chunk, chunk_noise(chunk.index))
            conditioning.append(encoded[-1])
    assert conditioning == ["one", "one", "The scene transitions. two", "two", "three",
                            "The scene transitions. four", "four"]
    assert rec.prompts == ["one", "one", "two", "two", "three", "four", "four"]  # the prompts in force
    assert rec.switches == [(4, "three")]  # the scripted switch only
