"""Video files: write mp4 (H.264 through PyAV's bundled FFmpeg) atomically, read frames back."""
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


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, *, crf: int = 18) -> Path:
    """Write uint8 frames [T, H, W, 3] as an H.264 mp4; the file appears only when complete."""
    import av

    path = Path(path)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_mp4 expects uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height = width + width % 2, height + height % 2  # yuv420p needs even sizes
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in frames:
                if frame.shape[0] != stream.height or frame.shape[1] != stream.width:
                    frame = np.pad(frame, ((0, stream.height - height), (0, stream.width - width), (0, 0)), mode="edge")
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())
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
