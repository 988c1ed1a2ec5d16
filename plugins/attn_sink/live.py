"""Live prompt sources for streaming use: a prompt file or stdin, polled before every chunk.

A source's `poll()` returns a new prompt or None. `LivePrompt` keeps the live prompt in force:
it holds until the source gives another one or the schedule moves on (a scripted shot start or
switch is newer than any live prompt, so it wins).
"""
from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Protocol, TextIO

from longlive.prompts import ChunkPrompt

log = logging.getLogger(__name__)


class PromptSource(Protocol):
    def poll(self) -> str | None:
        """A prompt that arrived since the last poll (the newest one), or None."""


def _clean(text: str) -> str:
    return " ".join(text.split())


class PromptFile:
    """A text file whose content is the prompt; a changed, non-empty content is a new prompt.

    Write the file atomically (write a temporary file, then rename it over this one), so a poll
    never reads half a prompt. The file need not exist until the first prompt.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._last: str | None = None

    def poll(self) -> str | None:
        try:
            text = _clean(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        if not text or text == self._last:
            return None
        self._last = text
        return text


class PromptStream:
    """Prompts from a text stream (stdin), one per line, read on a daemon thread started here.

    The thread only queues lines; `poll()` takes the newest queued prompt and drops older ones.
    It ends at end of stream; a daemon thread never keeps the process alive.
    """

    def __init__(self, stream: TextIO) -> None:
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._read, args=(stream,), name="attn_sink-prompts", daemon=True)
        self._thread.start()

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            text = _clean(line)
            if text:
                self._queue.put(text)

    def poll(self) -> str | None:
        newest = None
        while True:
            try:
                newest = self._queue.get_nowait()
            except queue.Empty:
                return newest


class LivePrompt:
    """The prompt a live source has put in force, per chunk."""

    def __init__(self, source: PromptSource) -> None:
        self.source = source
        self.prompt: str | None = None
        self._scheduled: str | None = None

    def reset(self) -> None:
        """A new video: no live prompt in force (a source keeps what it has read)."""
        self.prompt = self._scheduled = None

    def resolve(self, chunk: ChunkPrompt) -> str | None:
        """The live prompt for `chunk`, or None to keep the scheduled one."""
        if chunk.shot_start or chunk.prompt != self._scheduled:
            self.prompt = None  # the schedule moved on: a scripted event is newer than any live prompt
        self._scheduled = chunk.prompt
        new = self.source.poll()
        if new is not None:
            log.info("attn_sink: live prompt at chunk %d: %s", chunk.index, new)
            self.prompt = new
        return self.prompt
