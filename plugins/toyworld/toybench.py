"""ToyBench: read colour, shape and motion back out of toy-world frames and score them per segment.

Per frame (`read_frames`):
- background: the per-channel median of a thin border ring; its class is the nearest background
  base colour (textured backgrounds have their own base colours, so the mean colour decides).
  It counts as clean when >= 60 % of ring pixels lie within OBJECT_DISTANCE of the median.
- detection: pixels of the 3x3-smoothed frame farther than OBJECT_DISTANCE (RGB) from that
  median, minus specks (a pixel needs >= 3 detected pixels in its 3x3 neighbourhood). The
  object's box is found on the torus: on each axis it spans the complement of the largest run of
  (nearly) empty rows/columns, so a shape wrapping around an edge is still one box; detections
  outside it are ignored. Object pixels: smoothed pixels in the box at least half way from the
  background to the object's colour (the 50 % edge of a blurred shape).
- colour: the nearest palette colour to the median object pixel; shape: which of circle, square
  and up-pointing triangle, placed and sized from the mask's mean and variance, overlaps it best
  (IoU). Unlike the fill ratio (area / box: 0.785, 1.0, 0.5) this survives blurred, ragged edges.
Per frame against the caption in force (`score_video`):
- persistence: an object of plausible size (0.4x..2.5x the caption's area, fill >= 0.3, box at
  most half the frame). We test for one compact blob, not a component count.
- colour / shape accuracy: persistent and the right colour / shape; missing objects count wrong.
- background: clean and of the caption's class.
- motion: centre displacement over `window_s`, classified into 8 sectors of 45 degrees (no motion
  below 30 % of the caption's displacement), compared with the expected direction. For bouncing
  captions the expected direction starts as the caption's at every prompt span and mirrors an
  axis when the object enters the wall zone (2.5 px + one frame of motion) of the wall it is
  heading to; windows touching a wall zone are not scored, since a bounce inside makes the net
  displacement ambiguous. After one bounce a wrong initial direction looks right, so direction
  evidence in bouncing captions comes mostly before the first bounce. Wrapping captions compare
  displacements modulo the frame size.
- responsiveness: after each prompt switch, frames until colour, shape and background all match
  the new caption for `hold_frames` consecutive frames (None when they never do).
Segment and span numbers are means over their frames (motion: over scored windows by start frame).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence, Union

import attrs
import numpy as np
import torch

from longlive.errors import ConfigError
from longlive_plugins.toyworld.world import (BACKGROUNDS, COLORS, DIRECTIONS, SHAPE_FILL, SHAPES, SIZES,
                                             SPEEDS, Scene, parse_caption, shape_mask)

log = logging.getLogger(__name__)

OBJECT_DISTANCE = 60.0  # RGB distance separating object from background (palettes are >= 115 apart)
AREA_RANGE = (0.4, 2.5)  # plausible object area, relative to the caption's
COLOR_NAMES, BACKGROUND_NAMES = tuple(COLORS), tuple(BACKGROUNDS)
_COLOR_RGB = np.array(list(COLORS.values()), dtype=np.float32)  # [K, 3]
_BG_RGB = np.array([rgb for rgb, _ in BACKGROUNDS.values()], dtype=np.float32)  # [K, 3]
# Sector k of atan2(dy, dx) (image coordinates, y down) -> direction signs (sx, sy).
_SECTORS = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))
METRICS = ("color", "shape", "motion", "persistence", "background")
Schedule = Union[Sequence[tuple[int, str]], Sequence[str]]


@attrs.frozen(kw_only=True, eq=False)
class FrameReadings:
    """What ToyBench sees in each of T frames; pixel units; NaN / -1 where no object is found."""

    frame_hw: tuple[int, int]
    background: np.ndarray  # [T] index into BACKGROUND_NAMES
    background_clean: np.ndarray  # [T] bool
    area: np.ndarray  # [T] object pixels
    fill: np.ndarray  # [T] area / detection box area
    lo: np.ndarray  # [T, 2] detection box start (x, y); < 0 for an object across an edge
    hi: np.ndarray  # [T, 2] detection box end (x, y), exclusive; about 1 px wider than the shape
    centre: np.ndarray  # [T, 2] (x, y) in [0, W), [0, H)
    color: np.ndarray  # [T] index into COLOR_NAMES
    shape: np.ndarray  # [T] index into SHAPES


@attrs.frozen(kw_only=True)
class SegmentScores:
    start_frame: int
    end_frame: int  # exclusive
    color: float
    shape: float
    motion: float  # NaN when no window was scored
    persistence: float
    background: float
    caption: str | None = None  # set for prompt spans


@attrs.frozen(kw_only=True)
class SwitchResponse:
    frame: int  # first frame of the new caption
    caption: str
    frames_to_match: int | None  # None: never held for hold_frames frames


@attrs.frozen(kw_only=True)
class ToyBenchResult:
    fps: float
    num_frames: int
    overall: SegmentScores
    segments: tuple[SegmentScores, ...]  # fixed-length time segments
    spans: tuple[SegmentScores, ...]  # one per prompt span
    switches: tuple[SwitchResponse, ...]

    @property
    def responsiveness_frames(self) -> float:
        """Mean frames to match over switches that matched (NaN without any)."""
        done = [s.frames_to_match for s in self.switches if s.frames_to_match is not None]
        return float(np.mean(done)) if done else math.nan

    @property
    def responded(self) -> float:
        return sum(s.frames_to_match is not None for s in self.switches) / len(self.switches) \
            if self.switches else math.nan

    def to_dict(self) -> dict:
        def clean(v):
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v
        out = attrs.asdict(self)
        out.update(responsiveness_frames=self.responsiveness_frames, responded=self.responded)
        return clean(out)

    def format_table(self) -> str:
        head = f"{'frames':>11} {'time_s':>13} " + " ".join(f"{m[:7]:>7}" for m in METRICS)

        def row(s: SegmentScores) -> str:
            t = f"{s.start_frame / self.fps:5.1f}-{s.end_frame / self.fps:<7.1f}"
            vals = " ".join(f"{getattr(s, m):7.3f}" for m in METRICS)
            return f"{s.start_frame:>5}-{s.end_frame:<5} {t:>13} {vals}" + (f"  {s.caption}" if s.caption else "")
        lines = ["ToyBench segments", head, *map(row, self.segments), "overall", row(self.overall),
                 "prompt spans", *map(row, self.spans)]
        if self.switches:
            lines.append(f"switches (responded {self.responded:.2f}, mean {self.responsiveness_frames:.1f} frames)")
            lines += [f"  frame {s.frame:>5}: " + ("never" if s.frames_to_match is None else
                                                   f"{s.frames_to_match:>3} frames") + f"  {s.caption}"
                      for s in self.switches]
        return "\n".join(lines)


def _as_thwc(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 [T, H, W, 3] or float [3, T, H, W] in [-1, 1] -> float32 [T, H, W, 3] in 0..255."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        frames = frames.numpy() if frames.dtype == torch.uint8 else frames.float().numpy()
    if frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3:
        return frames.astype(np.float32)
    if np.issubdtype(frames.dtype, np.floating) and frames.ndim == 4 and frames.shape[0] == 3:
        return ((np.moveaxis(frames, 0, -1).clip(-1, 1) + 1) * 127.5).astype(np.float32)
    raise ConfigError(f"toybench: frames must be uint8 [T, H, W, 3] or float [3, T, H, W] in [-1, 1]; "
                      f"got {frames.dtype} {tuple(frames.shape)}")


def _circular_span(occupied: np.ndarray) -> tuple[int, int]:
    """(start, length) of the shortest circular interval holding every True of `occupied`."""
    n, idx = len(occupied), np.flatnonzero(occupied)
    gaps = np.diff(np.append(idx, idx[0] + n))  # distance from each True to the next, circularly
    i = int(np.argmax(gaps))
    return int(idx[(i + 1) % len(idx)]), n - int(gaps[i]) + 1


# Moment-matched templates: half extents from the per-axis variance of a shape of half extent a:
# square var = a^2/3, circle var = a^2/4, up-triangle var_x = a^2/6, var_y = 2a^2/9 (box centre
# a/3 above the centroid). Fringe pixels barely move moments, unlike the extreme pixels of a box.
_TEMPLATES = {"circle": (4.0, 4.0, 0.0), "square": (3.0, 3.0, 0.0), "triangle": (6.0, 4.5, 1 / 3)}


def _best_shape(mask: np.ndarray) -> int:
    """Index in SHAPES of the moment-matched template that overlaps `mask` [H, W] best (IoU).

    `mask` holds one object away from the frame edges (the caller rolls it to the middle).
    """
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    vx, vy = xs.var() + 1e-6, ys.var() + 1e-6
    px = np.arange(mask.shape[1]) + 0.5
    py = (np.arange(mask.shape[0]) + 0.5)[:, None]
    ious = []
    for name in SHAPES:
        kx, ky, shift = _TEMPLATES[name]
        hx, hy = np.sqrt(kx * vx), np.sqrt(ky * vy)
        m = shape_mask(name, (px[None, :] - cx) / hx, (py - cy + shift * hy) / hy, 1.0)
        ious.append(np.logical_and(m, mask).sum() / np.logical_or(m, mask).sum())
    return int(np.argmax(ious))


def _box_mean(x: np.ndarray) -> np.ndarray:
    """3x3 mean over the two axes after the first (circular), e.g. [T, H, W, C] -> same."""
    return sum(np.roll(x, (dy, dx), axis=(1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0


def _main_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) per axis (x, y) of the main object in `mask` [H, W], on the torus.

    The box is first found on rows/columns holding at least a tenth of the busiest one's pixels,
    so a stray speck far away does not stretch it, then grown over the adjacent non-empty ones
    (a triangle's thin apex).
    """
    start, length = np.zeros(2, dtype=int), np.zeros(2, dtype=int)
    for axis, counts in enumerate((mask.sum(0), mask.sum(1))):  # x: column counts, y: row counts
        n = len(counts)
        a, k = _circular_span(counts >= max(1, 0.1 * counts.max()))
        while k < n and counts[(a - 1) % n]:
            a, k = a - 1, k + 1
        while k < n and counts[(a + k) % n]:
            k += 1
        start[axis], length[axis] = a % n, k
    return start, length


def _read_object(frame: np.ndarray, smooth: np.ndarray, found: np.ndarray, bg: np.ndarray) -> tuple | None:
    """(centre, box lo, box hi, area, shape, color) of the main object of `frame` [H, W, 3], or None.

    `smooth` is the 3x3-smoothed frame and `found` [H, W] its detection mask, which fixes the
    object's box and colour (median raw pixel). Object pixels are the smoothed pixels inside the
    box (grown by 1) at least half way from the background to that colour: a symmetric blur
    keeps a straight edge at its 50 % level, so this undoes the growth the detection threshold
    causes.
    """
    h, w = found.shape
    start, length = _main_box(found)
    top, left = h // 2 - length[1] // 2, w // 2 - length[0] // 2  # the box, rolled to the middle
    shift = (top - start[1], left - start[0])
    box = np.zeros_like(found)
    box[max(0, top - 1): top + length[1] + 1, max(0, left - 1): left + length[0] + 1] = True
    frame = np.roll(frame, shift, axis=(0, 1))  # the object no longer crosses an edge
    smooth = np.roll(smooth, shift, axis=(0, 1))
    core = np.roll(found, shift, axis=(0, 1)) & box
    if not core.any():
        return None
    rgb = np.median(frame[core], axis=0)
    obj = box & (np.linalg.norm(smooth - bg, axis=-1) > 0.5 * np.linalg.norm(rgb - bg))  # [H, W]
    ys, xs = np.nonzero(obj)
    if not len(xs):
        return None
    size = np.array([w, h])
    lo = start - np.where(start + length > size, size, 0)  # detection box; < 0: wraps around an edge
    centre = (np.array([xs.mean(), ys.mean()]) + 0.5 - shift[::-1]) % size
    color = int(np.linalg.norm(_COLOR_RGB - rgb, axis=-1).argmin())
    return centre, lo, lo + length, len(xs), _best_shape(obj), color


def read_frames(frames: np.ndarray | torch.Tensor) -> FrameReadings:
    """Background, object mask, colour, shape and position of every frame."""
    video = _as_thwc(frames)  # [T, H, W, 3]
    t_len, h, w, _ = video.shape
    b = max(1, min(h, w) // 32)
    ring = np.concatenate([video[:, :b].reshape(t_len, -1, 3), video[:, -b:].reshape(t_len, -1, 3),
                           video[:, :, :b].reshape(t_len, -1, 3), video[:, :, -b:].reshape(t_len, -1, 3)], 1)
    bg = np.median(ring, axis=1)  # [T, 3]
    clean = (np.linalg.norm(ring - bg[:, None], axis=-1) < OBJECT_DISTANCE).mean(1) >= 0.6  # [T]
    bg_class = np.linalg.norm(bg[:, None] - _BG_RGB[None], axis=-1).argmin(1)  # [T]
    # Detect on the 3x3-smoothed frame (pixel noise / 3), then drop specks.
    smooth = _box_mean(video)  # [T, H, W, 3]
    found = np.linalg.norm(smooth - bg[:, None, None], axis=-1) > OBJECT_DISTANCE  # [T, H, W]
    found &= _box_mean(found.astype(np.float32)) >= 3 / 9 - 1e-6
    area, fill = np.zeros(t_len), np.full(t_len, np.nan)
    lo, hi, centre = (np.full((t_len, 2), np.nan) for _ in range(3))
    color, shape = np.full(t_len, -1), np.full(t_len, -1)
    for t in np.flatnonzero(found.any(axis=(1, 2))):
        got = _read_object(video[t], smooth[t], found[t], bg[t])
        if got is not None:
            centre[t], lo[t], hi[t], area[t], shape[t], color[t] = got
            fill[t] = area[t] / (hi[t] - lo[t]).prod()
    return FrameReadings(frame_hw=(h, w), background=bg_class, background_clean=clean, area=area, fill=fill,
                         lo=lo, hi=hi, centre=centre, color=color, shape=shape)


def prompt_spans(schedule: Schedule, num_frames: int) -> list[tuple[int, int, str]]:
    """[(start, end, caption)] from (start_frame, caption) pairs or per-frame captions."""
    if len(schedule) and isinstance(schedule[0], str):
        if len(schedule) != num_frames:
            raise ConfigError(f"toybench: {len(schedule)} per-frame captions for {num_frames} frames; "
                              f"give one caption per frame or (start_frame, caption) pairs")
        pairs = [(i, c) for i, c in enumerate(schedule) if i == 0 or c != schedule[i - 1]]
    else:
        pairs = [(int(s), c) for s, c in schedule]
    starts = [s for s, _ in pairs]
    if not pairs or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= num_frames:
        raise ConfigError(f"toybench: prompt start frames {starts} must begin at 0, increase, and stay "
                          f"below {num_frames} frames")
    merged = [p for i, p in enumerate(pairs) if i == 0 or p[1] != pairs[i - 1][1]]  # same caption: one span
    ends = [s for s, _ in merged[1:]] + [num_frames]
    return [(s, e, c) for (s, c), e in zip(merged, ends)]


def _motion_scores(r: FrameReadings, scene: Scene, start: int, end: int, fps: float, window: int,
                   ok: np.ndarray) -> np.ndarray:
    """Per window start in [start, end): 1/0 direction correct, NaN where not scored.

    `ok` [end - start] marks frames of the span with a plausible object.
    """
    h, w = r.frame_hw
    out = np.full(end - start, np.nan)
    ux, uy = DIRECTIONS[scene.direction]
    step = np.array([abs(ux) * w, abs(uy) * h]) * SPEEDS[scene.speed] / fps  # px per frame per axis
    margin = 2.5 + step
    signs = np.array([np.sign(round(ux, 6)), np.sign(round(uy, 6))])
    flips, expected = np.ones(2), np.zeros((end - start, 2))
    wall = np.zeros(end - start, dtype=bool)
    for i, t in enumerate(range(start, end)):
        if scene.bounce and ok[i]:
            for a, n in enumerate((w, h)):
                near_lo, near_hi = r.lo[t, a] <= margin[a], r.hi[t, a] >= n - margin[a]
                heading = flips[a] * signs[a]
                wall[i] |= bool(signs[a]) and (near_lo or near_hi)
                if (heading < 0 and near_lo) or (heading > 0 and near_hi):
                    flips[a] = -flips[a]
        expected[i] = flips * signs
    min_disp = max(1.0, 0.3 * float(np.hypot(*step)) * window)
    for i in range(end - start - window):
        if wall[i: i + window + 1].any():
            continue
        t0, t1 = start + i, start + i + window
        if not (ok[i] and ok[i + window]):
            out[i] = 0.0
            continue
        d = r.centre[t1] - r.centre[t0]
        d = (d + np.array([w, h]) / 2) % np.array([w, h]) - np.array([w, h]) / 2  # shortest way round
        if np.hypot(*d) < min_disp:
            out[i] = 0.0
            continue
        sector = int(round(math.atan2(d[1], d[0]) / (math.pi / 4))) % 8
        out[i] = float(np.array_equal(_SECTORS[sector], expected[i]))
    return out


def _mean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else math.nan


def _scores(per_frame: dict[str, np.ndarray], a: int, b: int, caption: str | None = None) -> SegmentScores:
    return SegmentScores(start_frame=a, end_frame=b, caption=caption,
                         **{m: _mean(per_frame[m][a:b]) for m in METRICS})


def score_video(frames: np.ndarray | torch.Tensor, *, fps: float, schedule: Schedule, segment_s: float = 10.0,
                window_s: float = 0.5, hold_frames: int = 3) -> ToyBenchResult:
    """Score generated frames against the captions they were asked to show."""
    r = read_frames(frames)
    t_len, (h, w) = len(r.area), r.frame_hw
    spans = prompt_spans(schedule, t_len)
    window = max(1, round(window_s * fps))
    per_frame = {m: np.zeros(t_len) for m in METRICS}
    match = np.zeros(t_len, dtype=bool)
    for start, end, cap in spans:
        scene, sl = parse_caption(cap), slice(start, end)
        expected_area = SHAPE_FILL[scene.shape] * (2 * SIZES[scene.size]) ** 2 * h * w
        ok = ((r.area[sl] >= AREA_RANGE[0] * expected_area) & (r.area[sl] <= AREA_RANGE[1] * expected_area)
              & (r.fill[sl] >= 0.3) & np.all(r.hi[sl] - r.lo[sl] <= np.array([w, h]) / 2, axis=1))
        color = ok & (r.color[sl] == COLOR_NAMES.index(scene.color))
        shape = ok & (r.shape[sl] == SHAPES.index(scene.shape))
        bg = r.background_clean[sl] & (r.background[sl] == BACKGROUND_NAMES.index(scene.background))
        for m, v in (("color", color), ("shape", shape), ("persistence", ok), ("background", bg)):
            per_frame[m][sl] = v
        match[sl] = color & shape & bg
        per_frame["motion"][sl] = _motion_scores(r, scene, start, end, fps, window, ok)
    seg = max(1, round(segment_s * fps))
    switches = []
    for start, end, cap in spans[1:]:
        runs = [t for t in range(start, end - hold_frames + 1) if match[t: t + hold_frames].all()]
        switches.append(SwitchResponse(frame=start, caption=cap, frames_to_match=runs[0] - start if runs else None))
    result = ToyBenchResult(
        fps=fps, num_frames=t_len, overall=_scores(per_frame, 0, t_len),
        segments=tuple(_scores(per_frame, a, min(a + seg, t_len)) for a in range(0, t_len, seg)),
        spans=tuple(_scores(per_frame, a, b, cap) for a, b, cap in spans), switches=tuple(switches))
    log.info("toybench: %d frames, colour %.3f shape %.3f motion %.3f persistence %.3f background %.3f",
             t_len, *(getattr(result.overall, m) for m in METRICS))
    return result


def plot(result: ToyBenchResult, path: str | Path) -> Path:
    """Write a PNG: each metric per time segment, prompt switches marked with their response."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: plotting is optional
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    edges = [s.start_frame / result.fps for s in result.segments] + [result.num_frames / result.fps]
    for m, style in zip(METRICS, ("-", "--", "-.", ":", (0, (5, 1, 1, 1)))):  # lines often coincide
        vals = [getattr(s, m) for s in result.segments]
        ax.stairs(vals, edges, label=m, linewidth=1.6, linestyle=style, baseline=None)
    for s in result.switches:
        x = s.frame / result.fps
        ax.axvline(x, color="gray", linestyle="--", linewidth=0.8)
        ax.text(x, 1.02, "never" if s.frames_to_match is None else f"+{s.frames_to_match}", fontsize=7)
    ax.set(xlabel="time (s)", ylabel="accuracy", ylim=(-0.02, 1.08), title="ToyBench per segment")
    ax.legend(loc="lower left", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")  # written whole, then renamed
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path
