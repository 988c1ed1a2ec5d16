"""The shapes world: scene vocabulary, captions, and a deterministic multi-shot video renderer.

A scene is one coloured shape (circle, square, triangle) on a plain or low-contrast textured
background, moving in one of 8 directions at one of 3 speeds, either bouncing off the walls or
wrapping around the edges. Frames are uint8 [T, H, W, 3] with hard-edged shapes and exact palette
colours, so ToyBench can read colour, shape and motion back out. Positions are kept in frame
units (0..1) and speeds in frame widths per second, so a scene looks the same at any size/fps.
Everything random comes from a numpy Generator seeded by the caller.
"""
from __future__ import annotations

import logging
import re
from typing import Sequence

import attrs
import numpy as np

from longlive.errors import ConfigError

log = logging.getLogger(__name__)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Saturated object colours: pairwise RGB distance >= 100, distance to every background >= 115.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (250, 130, 20),
    "yellow": (240, 225, 40),
    "green": (45, 200, 70),
    "cyan": (40, 215, 220),
    "blue": (45, 90, 235),
    "purple": (160, 60, 220),
    "pink": (255, 120, 190),
}
# Background base colours (pairwise distance >= 65) and texture; textures are +-TEXTURE_AMPLITUDE.
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], str]] = {
    "black": ((15, 15, 15), "plain"),
    "dark blue": ((20, 30, 95), "plain"),
    "dark green": ((20, 85, 35), "plain"),
    "gray": ((110, 110, 110), "plain"),
    "white": ((235, 235, 235), "plain"),
    "striped brown": ((100, 65, 30), "stripes"),
    "checkered plum": ((85, 25, 80), "checker"),
}
TEXTURE_AMPLITUDE = 8  # low contrast: far below the object/background distance
# Unit direction vectors in image coordinates (x right, y down).
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-0.5**0.5, -0.5**0.5),
    "up-right": (0.5**0.5, -0.5**0.5),
    "down-left": (-0.5**0.5, 0.5**0.5),
    "down-right": (0.5**0.5, 0.5**0.5),
}
SPEEDS: dict[str, float] = {"slow": 0.12, "medium": 0.25, "fast": 0.5}  # frame widths per second
SPEED_WORDS: dict[str, str] = {"slow": "slowly", "medium": "steadily", "fast": "quickly"}
SIZES: dict[str, float] = {"small": 0.11, "large": 0.18}  # half extent, in frame widths
SHAPE_FILL: dict[str, float] = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / bbox


def _one_of(options: Sequence[str]):
    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        if value not in options:
            raise ConfigError(f"toyworld scene: {attribute.name}={value!r} is not known; "
                              f"use one of {', '.join(options)}")
    return check


@attrs.frozen(kw_only=True)
class Scene:
    """What one shot shows; `caption(scene)` says it in words."""

    shape: str = attrs.field(validator=_one_of(SHAPES))
    color: str = attrs.field(validator=_one_of(tuple(COLORS)))
    background: str = attrs.field(validator=_one_of(tuple(BACKGROUNDS)))
    direction: str = attrs.field(validator=_one_of(tuple(DIRECTIONS)))
    speed: str = attrs.field(default="medium", validator=_one_of(tuple(SPEEDS)))
    size: str = attrs.field(default="small", validator=_one_of(tuple(SIZES)))
    bounce: bool = True  # False: the object wraps around the edges instead

    def to_dict(self) -> dict[str, object]:
        return attrs.asdict(self)


def caption(scene: Scene) -> str:
    """The canonical caption; every field of the scene is spelled out."""
    motion = "and bounces" if scene.bounce else "and wraps around"
    return (f"a {scene.size} {scene.color} {scene.shape} moves {scene.direction} "
            f"{SPEED_WORDS[scene.speed]} {motion} on a {scene.background} background")


def _alternatives(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_CAPTION_RE = re.compile(
    rf"a (?:(?P<size>{_alternatives(SIZES)}) )?(?P<color>{_alternatives(COLORS)}) "
    rf"(?P<shape>{_alternatives(SHAPES)}) moves (?P<direction>{_alternatives(DIRECTIONS)})"
    rf"(?: (?P<speed>{_alternatives(SPEED_WORDS.values())}))?"
    rf"(?: and (?P<motion>bounces|wraps around))? on a (?P<background>{_alternatives(BACKGROUNDS)}) "
    rf"background"
)


def parse_caption(text: str) -> Scene:
    """Inverse of `caption`. Size, speed and the bounce clause may be left out (defaults apply)."""
    m = _CAPTION_RE.fullmatch(" ".join(text.lower().split()).rstrip("."))
    if m is None:
        shown = repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text)} characters)"
        raise ConfigError(f"toyworld: cannot read caption {shown}; write it like "
                          f"'a small red circle moves left quickly and bounces on a black background'")
    words = {v: k for k, v in SPEED_WORDS.items()}
    return Scene(shape=m["shape"], color=m["color"], background=m["background"],
                 direction=m["direction"], speed=words[m["speed"] or SPEED_WORDS["medium"]],
                 size=m["size"] or "small", bounce=m["motion"] != "wraps around")


def sample_scene(rng: np.random.Generator, previous: Scene | None = None) -> Scene:
    """A uniformly random scene; after `previous` (a cut) background, colour and shape all change."""
    def pick(options: Sequence[str], avoid: str | None) -> str:
        choices = [o for o in options if o != avoid]
        return choices[int(rng.integers(len(choices)))]

    prev = previous
    return Scene(shape=pick(SHAPES, prev and prev.shape), color=pick(tuple(COLORS), prev and prev.color),
                 background=pick(tuple(BACKGROUNDS), prev and prev.background),
                 direction=pick(tuple(DIRECTIONS), None), speed=pick(tuple(SPEEDS), None),
                 size=pick(tuple(SIZES), None), bounce=bool(rng.integers(2)))


def switch_motion(rng: np.random.Generator, scene: Scene) -> Scene:
    """The same object on the same background with a new motion: another direction, and a random
    speed and edge behaviour (a prompt switch that only changes how the object moves)."""
    directions = [d for d in DIRECTIONS if d != scene.direction]
    return attrs.evolve(scene, direction=directions[int(rng.integers(len(directions)))],
                        speed=tuple(SPEEDS)[int(rng.integers(len(SPEEDS)))], bounce=bool(rng.integers(2)))


@attrs.frozen(kw_only=True)
class MotionState:
    """Where the object of `scene` is at the next frame to render (x, y in frame units 0..1).

    flip_x/flip_y are +1 or -1: the velocity sign relative to the caption's direction, changed by
    bounces. They carry over only while the scene stays the same (chunks of one caption); a new
    scene (prompt switch) keeps the position and restarts in the caption's direction.
    """

    x: float
    y: float
    flip_x: int
    flip_y: int
    scene: Scene


def background_image(background: str, size: int) -> np.ndarray:
    """The background of `size` x `size` pixels, uint8 [H, W, 3]; textures depend only on size."""
    if background not in BACKGROUNDS:
        raise ConfigError(f"toyworld: unknown background {background!r}; use one of {', '.join(BACKGROUNDS)}")
    base, texture = BACKGROUNDS[background]
    cell = max(2, size // 8)  # texture period scales with the frame
    idx = np.arange(size) // cell
    if texture == "stripes":
        sign = np.broadcast_to((idx % 2 * 2 - 1)[None, :], (size, size))  # vertical stripes
    elif texture == "checker":
        sign = (idx[:, None] + idx[None, :]) % 2 * 2 - 1
    else:
        sign = np.zeros((size, size), dtype=np.int64)
    img = np.asarray(base, dtype=np.int64)[None, None, :] + TEXTURE_AMPLITUDE * sign[..., None]
    return img.clip(0, 255).astype(np.uint8)  # [H, W, 3]


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
    """Pixels inside `shape` of half extent `half`, given pixel-centre offsets from its centre.

    The triangle points up with its base at the bottom: its bbox is the same 2*half square.
    """
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        return (dy >= -half) & (dy <= half) & (np.abs(dx) <= (dy + half) / 2)
    raise ConfigError(f"toyworld: unknown shape {shape!r}; use one of {', '.join(SHAPES)}")


def _trajectory(scene: Scene, frames: int, fps: float, state: MotionState) -> tuple[np.ndarray, MotionState]:
    """Centres [T, 2] in frame units, and the state of the frame after the last."""
    half = SIZES[scene.size]
    step = SPEEDS[scene.speed] / fps
    vx, vy = (step * c for c in DIRECTIONS[scene.direction])
    x, y, fx, fy = state.x, state.y, state.flip_x, state.flip_y
    out = np.empty((frames, 2), dtype=np.float64)  # [T, (x, y)]
    for t in range(frames):
        out[t] = (x, y)
        x, y = x + fx * vx, y + fy * vy
        if scene.bounce:  # mirror at the wall; lo <= x <= hi after it, as step (<= 0.5) < hi - lo
            lo, hi = half, 1.0 - half
            if x < lo or x > hi:
                x, fx = (2 * lo - x if x < lo else 2 * hi - x), -fx
            if y < lo or y > hi:
                y, fy = (2 * lo - y if y < lo else 2 * hi - y), -fy
        else:
            x, y = x % 1.0, y % 1.0
    return out, MotionState(x=x, y=y, flip_x=fx, flip_y=fy, scene=scene)


def render_shot(scene: Scene, frames: int, *, size: int = 64, fps: float = 8.0,
                rng: np.random.Generator | int = 0,
                start_state: MotionState | None = None) -> tuple[np.ndarray, MotionState]:
    """Render `frames` frames of `scene`: uint8 [T, H, W, 3] and the state to continue from.

    Without `start_state` the object starts at a random position (from `rng`); rendering a shot
    in pieces, each from the previous end state, gives exactly the frames of one call.
    """
    if frames < 0 or size < 8 or fps < 1:  # fps >= 1: one frame's step stays below the free range
        raise ConfigError(f"toyworld: render_shot needs frames >= 0, size >= 8 and fps >= 1; "
                          f"got {frames}, {size}, {fps}")
    half = SIZES[scene.size]
    if start_state is None:
        rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
        x, y = rng.uniform(half, 1.0 - half, size=2)
        start_state = MotionState(x=float(x), y=float(y), flip_x=1, flip_y=1, scene=scene)
    elif start_state.scene != scene:  # prompt switch: keep the position, restart the motion
        x, y = start_state.x, start_state.y
        if scene.bounce:
            x, y = (float(np.clip(v, half, 1.0 - half)) for v in (x, y))
        start_state = MotionState(x=x, y=y, flip_x=1, flip_y=1, scene=scene)
    centres, end = _trajectory(scene, frames, fps, start_state)
    pix = np.arange(size) + 0.5  # pixel centres
    cx, cy = centres[:, 0] * size, centres[:, 1] * size
    # Signed offsets on the torus, so wrapping objects are drawn on both sides of an edge.
    dx = (pix[None, None, :] - cx[:, None, None] + size / 2) % size - size / 2  # [T, 1, W]
    dy = (pix[None, :, None] - cy[:, None, None] + size / 2) % size - size / 2  # [T, H, 1]
    mask = shape_mask(scene.shape, dx, dy, half * size)  # [T, H, W]
    bg = background_image(scene.background, size)  # [H, W, 3]
    color = np.asarray(COLORS[scene.color], dtype=np.uint8)
    video = np.where(mask[..., None], color, bg[None])  # [T, H, W, 3]
    return video.astype(np.uint8), end


@attrs.frozen(kw_only=True)
class Shot:
    scene: Scene
    start_frame: int  # pixel frames
    num_frames: int
    switch: bool = False  # True: the object carries on from the previous shot with a new motion

    @property
    def caption(self) -> str:
        return caption(self.scene)


@attrs.frozen(kw_only=True, eq=False)
class Clip:
    """A rendered multi-shot clip: video uint8 [T, H, W, 3] and its shots."""

    video: np.ndarray
    shots: tuple[Shot, ...]
    fps: float
    seed: int

    @property
    def cut_frames(self) -> list[int]:
        """First frame of every shot after the first."""
        return [s.start_frame for s in self.shots[1:]]

    def prompt_schedule(self) -> list[tuple[int, str]]:
        """[(start_frame, caption)], the form ToyBench reads."""
        return [(s.start_frame, s.caption) for s in self.shots]

    def frame_captions(self) -> list[str]:
        return [s.caption for s in self.shots for _ in range(s.num_frames)]


def _sample_cuts(rng: np.random.Generator, num_shots: int, frames: int,
                 candidates: Sequence[int], min_shot_frames: int) -> list[int]:
    cands = sorted({int(c) for c in candidates if 0 < c < frames})
    for _ in range(1000 if len(cands) >= num_shots - 1 else 0):
        cuts = sorted(int(c) for c in rng.choice(cands, size=num_shots - 1, replace=False))
        if np.diff([0, *cuts, frames]).min() >= min_shot_frames:
            return cuts
    raise ConfigError(f"toyworld: cannot cut {frames} frames into {num_shots} shots of >= "
                      f"{min_shot_frames} frames at the allowed cut points; use fewer shots or more frames")


def sample_clip(seed: int, *, num_shots: int = 2, frames: int = 64, size: int = 64, fps: float = 8.0,
                cut_candidates: Sequence[int] | None = None, min_shot_frames: int | None = None,
                switch_prob: float = 0.0) -> Clip:
    """A random clip of `frames` frames in `num_shots` shots.

    Each boundary is a cut (new background and object at a random place) or, with probability
    `switch_prob`, a motion switch (`switch_motion`: the object keeps its place and changes how it
    moves). Boundaries fall on frames from `cut_candidates` (default: any frame), each shot lasting
    at least `min_shot_frames` (default: a quarter of an even split). With `switch_prob` 0 no draw
    is spent on the choice, so such clips equal those of earlier versions.
    """
    if not 0.0 <= switch_prob <= 1.0:
        raise ConfigError(f"toyworld: switch_prob={switch_prob} must lie in [0, 1]")
    if num_shots < 1 or frames < num_shots:
        raise ConfigError(f"toyworld: need 1 <= num_shots <= frames; got num_shots={num_shots}, frames={frames}")
    rng = np.random.default_rng(seed)
    candidates = range(1, frames) if cut_candidates is None else cut_candidates
    min_len = max(1, frames // (4 * num_shots)) if min_shot_frames is None else min_shot_frames
    bounds = [0, *_sample_cuts(rng, num_shots, frames, candidates, min_len), frames]
    shots, parts, scene, state = [], [], None, None
    for start, end in zip(bounds[:-1], bounds[1:]):
        switch = scene is not None and switch_prob > 0 and bool(rng.random() < switch_prob)
        scene = switch_motion(rng, scene) if switch else sample_scene(rng, previous=scene)
        video, state = render_shot(scene, end - start, size=size, fps=fps, rng=rng,
                                   start_state=state if switch else None)
        shots.append(Shot(scene=scene, start_frame=start, num_frames=end - start, switch=switch))
        parts.append(video)
    log.debug("toyworld clip seed=%d: %d shots, cuts at %s", seed, num_shots, bounds[1:-1])
    return Clip(video=np.concatenate(parts), shots=tuple(shots), fps=fps, seed=seed)
