"""Does a toy model read the direction word? Generate one scene under each of the 8 direction words
with the same seeds and compare where the object goes.

For each seed and direction word d, two videos of `--frames` frames (default 16: 4 chunks) of
"a large red square moves d steadily and wraps around on a black background":
- start: the caption from frame 0. Reported: the first chunk's displacement (frames 0 to 3) and
  the whole clip's; `spread` is the largest distance between the first-chunk displacements of
  two direction words at one seed (0 px: the word does not change the first chunk at all).
- switch: "moves left" for the first 3 chunks, then d (a prompt switch that keeps the object):
  the displacement after the switch.
A clip follows its caption when its displacement is within 22.5 degrees of d (ToyBench's sectors).
Wrapping captions, so no bounce can reverse a direction.

    python benchmarks/toy_direction_probe.py --checkpoint plugins/toyworld/weights/toy_ar.safetensors
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from longlive.config import load_experiment
from longlive.assembly import build_parts, render
from longlive.prompts import PromptScript, Shot, chunk_prompts
from longlive.run import make_run
from longlive_plugins.toyworld.toybench import read_frames
from longlive_plugins.toyworld.world import DIRECTIONS

EXPERIMENT = "experiments/toy/eval_ar.toml"  # the toy sampler defaults (8 UniPC steps, shift 2, window 16)
CHUNK = 4  # latent = pixel frames per chunk (codec temporal factor 1)


def _caption(direction: str) -> str:
    return f"a large red square moves {direction} steadily and wraps around on a black background"


def _displacements(run, parts, shots: list[tuple[str, int]], frames: int) -> np.ndarray:
    """Per-frame centre steps [T - 1, 2] (x, y) in pixels, the short way round the torus."""
    script = PromptScript(shot=tuple(Shot(prompt=_caption(d), frames=n) for d, n in shots))
    video = render(run, parts, chunk_prompts(script, num_frames=frames, frames_per_chunk=CHUNK),
                   show_progress=False, keep_video=True).video
    centre = read_frames(video[0]).centre  # [T, 2]
    size = video.shape[-1]
    return (np.diff(centre, axis=0) + size / 2) % size - size / 2


def _follows(d: np.ndarray, direction: str) -> bool:
    u = np.asarray(DIRECTIONS[direction])
    return bool(np.linalg.norm(d) > 0 and d @ u / np.linalg.norm(d) > math.cos(math.pi / 8))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="toy DiT weights (safetensors)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=16, help="latent frames per clip; a multiple of 8")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--steps", type=int, help="sampler steps (default: the experiment's 8)")
    parser.add_argument("--directions", nargs="+", choices=tuple(DIRECTIONS), default=list(DIRECTIONS))
    parser.add_argument("--device", default="cpu", help="run.device: cpu (default), cuda or auto")
    args = parser.parse_args(argv)
    if args.frames % (2 * CHUNK):
        parser.error(f"--frames {args.frames} must be a multiple of {2 * CHUNK}")
    path = str(Path(args.checkpoint).resolve()).replace('"', '\\"')  # the experiment resolves relative to itself
    start_ok = switch_ok = 0
    spreads = []
    parts = None
    for seed in range(args.seeds):
        overrides = [f'model.checkpoint="{path}"', f"sampler.num_frames={args.frames}", f"run.seed={seed}",
                     f"sampler.guidance={args.guidance}", f'run.device="{args.device}"'] + ([f"sampler.steps={args.steps}"] if args.steps else [])
        run = make_run(load_experiment(EXPERIMENT, overrides), create_dir=False)
        parts = parts or build_parts(run)  # same weights for every seed; the seed only sets the noise
        firsts = []
        for d in args.directions:
            steps = _displacements(run, parts, [(d, args.frames)], args.frames)
            first, whole = steps[:CHUNK - 1].sum(0), steps.sum(0)
            firsts.append(first)
            half = args.frames // 2
            after = _displacements(run, parts, [("left", half), (d, args.frames - half)], args.frames)[half:].sum(0)
            start_ok += _follows(whole, d)
            switch_ok += _follows(after, d)
            print(f"seed {seed} {d:10s} first chunk ({first[0]:+5.1f},{first[1]:+5.1f})  "
                  f"clip ({whole[0]:+5.1f},{whole[1]:+5.1f})  after left->{d} ({after[0]:+5.1f},{after[1]:+5.1f})")
        f = np.array(firsts)
        spreads.append(float(np.linalg.norm(f[:, None] - f[None], axis=-1).max()))
    n = args.seeds * len(args.directions)
    print(f"checkpoint {args.checkpoint}, guidance {args.guidance}, {args.seeds} seeds x {len(args.directions)} words")
    print(f"first-chunk spread across direction words: {', '.join(f'{s:.1f}' for s in spreads)} px")
    print(f"clip follows its caption: {start_ok}/{n}; follows a switch from left: {switch_ok}/{n}")
    return {"spread_px": spreads, "clips": n, "follow_caption": start_ok, "follow_switch": switch_ok}


if __name__ == "__main__":
    main()
