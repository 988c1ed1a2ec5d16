"""The video sink of a generation run: decoded frames are encoded into the mp4 as they arrive.

Host memory stays bounded for any video length: a piece of frames is converted to uint8,
encoded and dropped. Each video (one per batch element) is written as `<name>.partial.mp4`, a
fragmented mp4, so even a killed process leaves a playable file of what was made. `finish()`
closes the files and renames them to their final names (`os.replace`: atomic), so a file under
the final name is always complete; `abort()` (after an error) closes them properly and keeps
them under their partial names. Nothing is ever written under a final name on failure.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from longlive.media import Mp4Encoder, to_uint8_frames

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial.mp4"


def partial_path(path: Path) -> Path:
    """`video.mp4` -> `video.partial.mp4`."""
    return path.with_name(path.stem + PARTIAL_SUFFIX)


class VideoSink:
    """Encodes [B, 3, t, H, W] pieces (in [-1, 1], in order) into one mp4 per batch element."""

    def __init__(self, paths: list[Path], fps: float, *, crf: int = 18) -> None:
        self.paths = [Path(p) for p in paths]
        self.fps, self.crf = fps, crf
        self.frames = 0
        self._encoders: list[Mp4Encoder] = []
        self._open = True

    @property
    def partial_paths(self) -> list[Path]:
        return [partial_path(p) for p in self.paths]

    def write(self, frames: torch.Tensor) -> None:
        if not self._open:
            raise RuntimeError("VideoSink.write after finish() or abort()")
        if frames.shape[0] != len(self.paths):
            raise ValueError(f"VideoSink has {len(self.paths)} videos, got a batch of {frames.shape[0]}")
        if not self._encoders:
            height, width = frames.shape[-2:]
            for path in self.partial_paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._encoders.append(Mp4Encoder(path, self.fps, width=width, height=height, crf=self.crf,
                                                 fragmented=True))
        for encoder, video in zip(self._encoders, frames):
            encoder.write(to_uint8_frames(video))
        self.frames += frames.shape[2]

    def finish(self) -> list[Path]:
        """Close every file and give it its final name; returns the final paths."""
        self._close_encoders()
        if not self._encoders:
            raise RuntimeError("VideoSink.finish: no frames were written")
        for path in self.paths:
            os.replace(partial_path(path), path)
        return self.paths

    def abort(self) -> list[Path]:
        """Close every file properly and keep it under its partial name; returns those paths."""
        self._close_encoders()
        kept = [p for p in self.partial_paths if p.exists()]
        for path in kept:
            log.warning("the run failed: the partial video (%d frames) is kept at %s", self.frames, path)
        return kept

    def _close_encoders(self) -> None:
        self._open = False
        errors = []
        for encoder in self._encoders:
            try:
                encoder.close()
            except Exception as e:  # close the others anyway; report the first
                errors.append(e)
        if errors:
            raise errors[0]
