"""Video files: encode mp4 (H.264 through PyAV's bundled FFmpeg) frame by frame or atomically in one go, read
frames back. The streaming sink of a generation run (partial -> final names) is longlive/video_sink.py."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from longlive.errors import ConfigError


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    frames = video.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


class Mp4Encoder:
    """An H.264 mp4 written frame by frame: `write(uint8 [t, H, W, 3])` any number of times, then
    `close()`. With `fragmented` the file is a fragmented mp4 (an empty moov, then one fragment
    per keyframe, flushed as it is made, no encoder lookahead): a process killed mid-write leaves a
    playable file of the fragments written so far. Keyframes come every `keyframe_s` seconds, so that is
    about what is lost.
    """

    def __init__(self, path: str | Path, fps: float, *, width: int, height: int, crf: int = 18,
                 fragmented: bool = False, keyframe_s: float = 1.0) -> None:
        import av

        self.path, self.frames = Path(path), 0
        self._size = (height, width)
        options = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"} if fragmented else {}
        self._container = av.open(str(self.path), mode="w", options=options)
        try:
            self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            self._stream.width, self._stream.height = width + width % 2, height + height % 2  # yuv420p: even sizes
            self._stream.pix_fmt = "yuv420p"
            codec_options = {"crf": str(crf)}
            if fragmented:  # a fragment ends at a keyframe: x264's default (every 250 frames) loses too much,
                # and its lookahead would hold ~50 frames back from the file; zerolatency emits each frame at once
                codec_options.update(g=str(max(1, round(keyframe_s * fps))), tune="zerolatency")
            self._stream.options = codec_options
        except BaseException:
            self._container.close()
            raise

    def write(self, frames: np.ndarray) -> None:
        """Encode uint8 frames [t, H, W, 3] of the size given at construction."""
        import av

        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[1:3] != self._size:
            raise ValueError(f"Mp4Encoder expects uint8 [t, {self._size[0]}, {self._size[1]}, 3], "
                             f"got {frames.dtype} {frames.shape}")
        height, width = self._size
        pad = ((0, self._stream.height - height), (0, self._stream.width - width), (0, 0))
        for frame in frames:
            if pad[0][1] or pad[1][1]:
                frame = np.pad(frame, pad, mode="edge")
            self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                                               format="rgb24")))
        self.frames += len(frames)

    def close(self) -> None:
        """Flush the encoder and close the file (idempotent). The file is complete afterwards."""
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            container.mux(self._stream.encode())
        finally:
            container.close()


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, *, crf: int = 18) -> Path:
    """Write uint8 frames [T, H, W, 3] as an H.264 mp4; the file appears only when complete."""
    path = Path(path)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_mp4 expects uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        encoder = Mp4Encoder(tmp, fps, width=frames.shape[2], height=frames.shape[1], crf=crf)
        try:
            encoder.write(frames)
        finally:
            encoder.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode every frame of a video file: (uint8 [T, H, W, 3], fps)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
    return np.stack(frames), fps


def read_image(path: str | Path, *, height: int, width: int) -> torch.Tensor:
    """Read an image as [3, H, W] in [-1, 1]; it must already have the video's size."""
    import av

    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    except (av.error.FFmpegError, StopIteration, OSError) as e:
        raise ConfigError(f"generate.image: {str(path)!r} is not a readable image ({e})") from None
    if frame.shape[:2] != (height, width):
        raise ConfigError(f"generate.image: {Path(path).name} is {frame.shape[1]}x{frame.shape[0]} (WxH) but the video "
                          f"is {width}x{height}; resize the image or set sampler.width/height")
    return torch.from_numpy(frame).permute(2, 0, 1).float().div(127.5).sub(1)
