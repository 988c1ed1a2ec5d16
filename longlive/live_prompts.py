"""The live prompt source of `longlive live`: prompts typed on the page, taken at the next chunk.

`PagePrompts` is a live prompt source like the attn_sink plugin's prompt file and stdin: it
answers the `longlive_next_prompt` role hook before every chunk, so a typed prompt reaches the
chunk loop through exactly the path a file prompt takes (a prompt switch inside the shot, or,
with "new shot", a `NewShot`: a cut). The live command registers it on the run's plugin
manager with `tryfirst`, so the page wins over another enabled source (attn_sink's file or stdin
still answer while the page has sent nothing).

The web server calls `submit` from its own thread; the generator thread polls. Only the newest
pending request is kept: a flood of prompts between two chunks costs nothing, and the one typed
last takes effect. As for a prompt file, a scripted shot start or switch is newer than any live
prompt and wins.

Text from the page is checked here (`clean_prompt`): one line of printable text, at most
MAX_PROMPT_CHARS characters after whitespace is collapsed; anything else is a `PromptRejected`
whose message the page shows. Nothing a page sends can raise inside the generator.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable

import attrs

from longlive.prompts import NewShot
from longlive.registry import hookimpl

if TYPE_CHECKING:
    import torch

    from longlive.pipeline import GenerationState
    from longlive.prompts import ChunkPrompt

MAX_PROMPT_CHARS = 1000  # far more than any text encoder reads (UMT5: 512 tokens); longer input is not a prompt


class PromptRejected(ValueError):
    """Why a prompt from the page cannot be used (one line, shown on the page)."""


def clean_prompt(text: object) -> str:
    """`text` as a prompt: whitespace collapsed; PromptRejected when it is empty, too long or not text."""
    if not isinstance(text, str):
        raise PromptRejected(f"the prompt must be text, got {type(text).__name__}")
    if any(not (c.isprintable() or c.isspace()) for c in text):
        raise PromptRejected("the prompt holds control characters or binary data; type plain text")
    prompt = " ".join(text.split())
    if not prompt:
        raise PromptRejected("the prompt is empty; type what the next chunk should show")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptRejected(f"the prompt has {len(prompt)} characters, more than {MAX_PROMPT_CHARS}; shorten it")
    return prompt


@attrs.frozen
class PromptRequest:
    """One prompt sent from the page: `id` counts requests from 1; `cut` starts a new shot."""

    id: int
    prompt: str
    cut: bool
    submitted: float  # time.monotonic() when it arrived


@attrs.frozen
class ChunkRecord:
    """A generated chunk as it was made: its prompt and events, and the page request in force (if any)."""

    chunk: ChunkPrompt
    request: PromptRequest | None


class PagePrompts:
    """Live prompt source fed by the page; reports every generated chunk to `on_chunk`."""

    def __init__(self, on_chunk: Callable[[ChunkRecord], None] | None = None) -> None:
        self.on_chunk = on_chunk
        self._lock = threading.Lock()
        self._pending: PromptRequest | None = None
        self._count = 0
        self._in_force: PromptRequest | None = None  # the page request whose prompt is in force
        self._scheduled: str | None = None  # the scheduled prompt of the last chunk

    def submit(self, prompt: object, *, cut: bool = False) -> tuple[PromptRequest, PromptRequest | None]:
        """Queue a prompt for the next chunk; returns (the request, the pending one it replaced)."""
        text = clean_prompt(prompt)
        with self._lock:
            self._count += 1
            request = PromptRequest(id=self._count, prompt=text, cut=bool(cut), submitted=time.monotonic())
            replaced, self._pending = self._pending, request
        return request, replaced

    @property
    def pending(self) -> PromptRequest | None:
        with self._lock:
            return self._pending

    def reset(self) -> None:
        """A new video: nothing in force (a pending request stays for its first chunk)."""
        self._in_force = self._scheduled = None

    @hookimpl(tryfirst=True)
    def longlive_next_prompt(self, chunk: ChunkPrompt) -> str | NewShot | None:
        if chunk.index == 0:
            self.reset()
        if chunk.shot_start or chunk.prompt != self._scheduled:
            self._in_force = None  # the schedule moved on: a scripted event is newer than any live prompt
        self._scheduled = chunk.prompt
        with self._lock:
            taken, self._pending = self._pending, None
        if taken is not None:
            self._in_force = taken
            return NewShot(taken.prompt) if taken.cut else taken.prompt
        return self._in_force.prompt if self._in_force is not None else None

    @hookimpl
    def longlive_chunk_done(self, index: int, latents: torch.Tensor, state: GenerationState) -> None:
        if self.on_chunk is not None and state.chunk is not None:
            self.on_chunk(ChunkRecord(chunk=state.chunk, request=self._in_force))
