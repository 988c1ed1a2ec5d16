"""Prompt scripts: shots with durations and prompt switches, turned into per-chunk prompts.

A prompt script is a TOML file (format in docs/prompt_scripts.md):

    [[shot]]
    prompt = "a red circle moves left on a dark blue background"
    frames = 16                     # latent frames; a multiple of sampler.frames_per_chunk

    [[shot]]
    prompt = "a green square moves up on a white background"
    frames = 16
    switches = [{ at_frame = 8, prompt = "a green square moves down on a white background" }]

Shot starts and prompt switches are structured events (ChunkPrompt.shot_start / .switch), never
strings parsed out of prompts.
"""
from __future__ import annotations

from pathlib import Path

import attrs

from longlive.errors import ConfigError
from longlive.config import MAX_FRAMES, read_toml
from longlive.structure import in_range, structure


@attrs.frozen(kw_only=True)
class Switch:
    """A prompt change inside a shot, `at_frame` latent frames after the shot starts."""

    at_frame: int = attrs.field(validator=in_range(1, MAX_FRAMES))
    prompt: str


@attrs.frozen(kw_only=True)
class Shot:
    prompt: str
    frames: int = attrs.field(validator=in_range(1, MAX_FRAMES))  # latent frames
    switches: tuple[Switch, ...] = ()


@attrs.frozen(kw_only=True)
class PromptScript:
    shot: tuple[Shot, ...]

    @property
    def total_frames(self) -> int:
        return sum(s.frames for s in self.shot)


@attrs.frozen
class ChunkPrompt:
    """What chunk `index` is conditioned on, and which events start with it."""

    index: int
    prompt: str
    shot_index: int
    shot_start: bool  # the first chunk of a shot (chunk 0 included)
    switch: bool  # the prompt changed inside the shot at this chunk


@attrs.frozen
class NewShot:
    """A live prompt source's answer that cuts: a new shot starts at this chunk with `prompt`.

    A plain string answer is a prompt switch inside the shot (longlive_next_prompt)."""

    prompt: str


def load_prompt_script(path: str | Path) -> PromptScript:
    path = Path(path)
    where = f"prompt script {path.name}"
    if not path.exists():
        raise ConfigError(f"generate.prompt_script: {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"generate.prompt_script: {str(path)!r} is not a regular file")
    table = read_toml(path, where=where)
    if not table.get("shot"):
        raise ConfigError(f"{where}: no shots; write at least one [[shot]] with prompt and frames")
    return structure(table, PromptScript, where=where)


def single_prompt(prompt: str, frames: int) -> PromptScript:
    return PromptScript(shot=(Shot(prompt=prompt, frames=frames),))


def chunk_prompts(script: PromptScript, *, num_frames: int, frames_per_chunk: int,
                  where: str = "prompt script") -> list[ChunkPrompt]:
    """One ChunkPrompt per chunk; durations must align with chunks and cover num_frames exactly."""
    if script.total_frames != num_frames:
        raise ConfigError(f"{where}: shots cover {script.total_frames} latent frames but sampler.num_frames = "
                          f"{num_frames}; make them equal")
    out: list[ChunkPrompt] = []
    for shot_index, shot in enumerate(script.shot):
        if shot.frames % frames_per_chunk:
            raise ConfigError(f"{where}: shot {shot_index} has frames = {shot.frames}, not a multiple of "
                              f"sampler.frames_per_chunk = {frames_per_chunk}")
        switches = {}
        for sw in shot.switches:
            if sw.at_frame % frames_per_chunk or sw.at_frame >= shot.frames:
                raise ConfigError(f"{where}: shot {shot_index} switch at_frame = {sw.at_frame} must be a multiple of "
                                  f"{frames_per_chunk} inside the shot (< {shot.frames})")
            if sw.at_frame // frames_per_chunk in switches:
                raise ConfigError(f"{where}: shot {shot_index} has two switches at_frame = {sw.at_frame}; "
                                  f"keep one (a chunk has one prompt)")
            switches[sw.at_frame // frames_per_chunk] = sw.prompt
        prompt = shot.prompt
        for local in range(shot.frames // frames_per_chunk):
            switched = local in switches
            prompt = switches.get(local, prompt)
            out.append(ChunkPrompt(len(out), prompt, shot_index, shot_start=local == 0, switch=switched))
    return out


def pixel_schedule(chunks: list[ChunkPrompt], *, frames_per_chunk: int, temporal_stride: int) -> list[tuple[int, str]]:
    """[(first pixel frame, prompt)] wherever the prompt changes: the form video metrics read.

    Chunk c starts at latent frame c * frames_per_chunk; a causal codec decodes latent frame
    f > 0 to pixel frames from 1 + stride * (f - 1) on (frame 0 is one pixel frame).
    """
    out = []
    for i, c in enumerate(chunks):
        if i == 0 or c.prompt != chunks[i - 1].prompt:
            first = c.index * frames_per_chunk
            out.append((0 if first == 0 else 1 + temporal_stride * (first - 1), c.prompt))
    return out


def dump_prompt_script(chunks: list[ChunkPrompt], *, frames_per_chunk: int) -> str:
    """The prompt script (TOML text) that schedules `chunks` (as generated: a live source's prompts,
    switches and cuts included) again: a shot per shot start, a switch wherever the prompt changes
    inside a shot. `chunk_prompts` of it gives back the same prompts and events."""
    import json

    def quoted(text: str) -> str:  # JSON escapes are TOML basic-string escapes; TOML also wants DEL escaped
        return json.dumps(text).replace("\x7f", "\\u007f")

    if not chunks or not chunks[0].shot_start:
        raise ValueError("dump_prompt_script: the first chunk must start a shot")
    shots: list[list[ChunkPrompt]] = []
    for chunk in chunks:
        if chunk.shot_start:
            shots.append([])
        shots[-1].append(chunk)
    lines = [f"# {len(chunks)} chunks of {frames_per_chunk} latent frames, {len(shots)} shots"]
    for shot in shots:
        lines += ["", "[[shot]]", f"prompt = {quoted(shot[0].prompt)}", f"frames = {len(shot) * frames_per_chunk}"]
        switches = [f"{{ at_frame = {local * frames_per_chunk}, prompt = {quoted(c.prompt)} }}"
                    for local, c in enumerate(shot) if local and c.prompt != shot[local - 1].prompt]
        if switches:
            lines.append("switches = [\n    " + ",\n    ".join(switches) + ",\n]")
    return "\n".join(lines) + "\n"
