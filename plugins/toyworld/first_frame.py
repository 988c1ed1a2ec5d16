"""Is the first frame's object kept? The I2V score of held-out ToyBench (`toy_eval` with `eval_i2v`).

An I2V clip is conditioned on frame 0 of a held-out ground-truth clip (`truth`, uint8
[T, H, W, 3]: frame 0 is the conditioning image, later frames show where its object goes under
the caption). ToyBench reads the object in both videos (`read_frames`: exact on rendered frames),
and each opening frame t = 1 .. `frames` of the generated video is scored against it:

- colour kept: an object is found and its palette colour is the image's;
- shape kept: an object is found and its shape (circle, square, triangle) is the image's;
- position kept: an object is found within `tolerance` x frame width (torus distance, so a wrapping
  object counts across an edge) of the ground-truth object's centre at frame t, i.e. where the
  image's object is at t when it moves as its caption says;
- all kept: the three at once;
- position error: the mean torus distance in pixels over the opening frames with an object
  (None when none has one).

Frame 0 is not scored: generation writes the image latent into it (a lossless codec returns the
image). A text-only (T2V) clip scored the same way gives the chance level: the caption fixes the
colour and shape, not the place.
"""
from __future__ import annotations

import math

import attrs
import numpy as np
import torch

from longlive.errors import ConfigError
from longlive_plugins.toyworld.toybench import read_frames

POSITION_TOLERANCE = 1 / 16  # of the frame width: 4 px at 64 px, one frame of the fastest motion
KEPT = ("color_kept", "shape_kept", "position_kept", "all_kept")


@attrs.frozen(kw_only=True)
class FirstFrameScores:
    color_kept: float  # share of opening frames
    shape_kept: float
    position_kept: float
    all_kept: float
    position_error_px: float | None  # mean over opening frames with an object
    frames: int  # opening frames scored

    def to_dict(self) -> dict:
        return attrs.asdict(self)


def torus_distance(a: np.ndarray, b: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Distance between points [..., 2] (x, y) on a W x H torus (`size` = (W, H))."""
    d = np.abs(a - b) % np.asarray(size, dtype=float)
    return np.hypot(*np.moveaxis(np.minimum(d, np.asarray(size) - d), -1, 0))


def score_first_frame(generated: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor, *, frames: int,
                      tolerance: float = POSITION_TOLERANCE) -> FirstFrameScores:
    """Score opening frames 1..`frames` of `generated` against the object of `truth`'s frame 0 and
    its ground-truth positions. Both videos: uint8 [T, H, W, 3] or float [3, T, H, W] in [-1, 1]."""
    if frames < 1:
        raise ConfigError(f"plugins.toyworld.eval_i2v_frames: {frames} must be >= 1")
    gen, ref = read_frames(_head(generated, frames + 1)), read_frames(_head(truth, frames + 1))
    n = len(gen.area)
    if n < frames + 1 or len(ref.area) < frames + 1 or gen.frame_hw != ref.frame_hw:
        raise ConfigError(f"first-frame score: needs {frames + 1} frames of one size in both videos; got "
                          f"{n} of {gen.frame_hw} and {len(ref.area)} of {ref.frame_hw}; lower "
                          f"plugins.toyworld.eval_i2v_frames or generate more frames")
    if ref.color[0] < 0:
        raise ConfigError("first-frame score: the conditioning image (truth frame 0) shows no object")
    h, w = gen.frame_hw
    t = np.arange(1, frames + 1)
    found = gen.color[t] >= 0
    dist = np.where(found, torus_distance(np.nan_to_num(gen.centre[t]), ref.centre[t], (w, h)), np.inf)
    color = found & (gen.color[t] == ref.color[0])
    shape = found & (gen.shape[t] == ref.shape[0])
    position = dist <= tolerance * w
    return FirstFrameScores(color_kept=float(color.mean()), shape_kept=float(shape.mean()),
                            position_kept=float(position.mean()), all_kept=float((color & shape & position).mean()),
                            position_error_px=float(dist[found].mean()) if found.any() else None, frames=frames)


def _head(video: np.ndarray | torch.Tensor, frames: int) -> np.ndarray | torch.Tensor:
    """The first `frames` frames of uint8 [T, H, W, 3] or float [3, T, H, W] (ToyBench's two layouts)."""
    uint8 = video.dtype == torch.uint8 if isinstance(video, torch.Tensor) else video.dtype == np.uint8
    return video[:frames] if uint8 else video[:, :frames]


def mean_and_stderr(values: list[float | None]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n)) of the finite values; NaN where too few."""
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(x):
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
