"""Live prompt sources for streaming use: a prompt file or stdin, polled before every chunk.

A source's `poll()` returns a new prompt or None. `LivePrompt` keeps the live prompt in force:
it holds until the source gives another one or the schedule moves on (a scripted shot start or
switch is newer than any live prompt, so it wins).

A live source never stops generation: input that cannot be read or decoded (a folder, FIFO or
device at the prompt path, non-UTF-8 bytes, an oversized file) is logged once at WARNING and
ignored, and the prompt in force stays. Only regular files are read, and they are opened
non-blocking, so a poll never waits.
"""
from __future__ import annotations

import logging
import os
import queue
import stat
import threading
from pathlib import Path
from typing import Protocol, TextIO

from longlive.prompts import ChunkPrompt

log = logging.getLogger(__name__)

MAX_PROMPT_BYTES = 64 * 1024  # a prompt file larger than this is ignored (it is not a prompt)


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
        self._problem: str | None = None  # the last problem logged (each is logged once)

    def poll(self) -> str | None:
        try:
            text = self._read()
        except _Unusable as e:
            if str(e) != self._problem:
                log.warning("attn_sink: live prompt file %s %s; ignored, the prompt in force stays", self.path, e)
                self._problem = str(e)
            return None
        self._problem = None
        text = _clean(text) if text is not None else ""
        if not text or text == self._last:
            return None
        self._last = text
        return text

    def _read(self) -> str | None:
        """The file's text; None while it does not exist; _Unusable when it cannot be a prompt."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens without waiting
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _Unusable(f"cannot be opened ({e.strerror or e})") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _Unusable("is not a regular file (a folder, FIFO or device)")
            if info.st_size > MAX_PROMPT_BYTES:
                raise _Unusable(f"holds {info.st_size} bytes, more than a prompt ({MAX_PROMPT_BYTES})")
            data = os.read(fd, MAX_PROMPT_BYTES + 1)
        except OSError as e:
            raise _Unusable(f"cannot be read ({e.strerror or e})") from None
        finally:
            os.close(fd)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Unusable("is not UTF-8 text") from None


class _Unusable(Exception):
    """Why the prompt file cannot give a prompt now (logged by PromptFile.poll)."""


class PromptStream:
    """Prompts from a text stream (stdin), one per line, read on a daemon thread started here.

    The thread only queues lines; `poll()` takes the newest queued prompt and drops older ones.
    It ends at end of stream; a daemon thread never keeps the process alive. Lines are read as
    bytes where the stream has them: a line that is not UTF-8 is logged and skipped.
    """

    def __init__(self, stream: TextIO) -> None:
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._read, args=(stream,), name="attn_sink-prompts", daemon=True)
        self._thread.start()

    def _read(self, stream: TextIO) -> None:
        try:
            for line in getattr(stream, "buffer", stream):  # bytes from a real stdin, str from a StringIO
                try:
                    text = _clean(line.decode("utf-8") if isinstance(line, bytes) else line)
                except UnicodeDecodeError:
                    log.warning("attn_sink: a live prompt line is not UTF-8 text; ignored")
                    continue
                if text:
                    self._queue.put(text)
        except (OSError, ValueError) as e:  # a closed or failing stream ends the source, not the run
            log.warning("attn_sink: live prompts from the stream stopped (%s)", e)

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
