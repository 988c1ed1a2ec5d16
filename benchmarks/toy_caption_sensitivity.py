"""Does a toy model use the direction word where only the caption can say where the object goes?

Teacher forcing (the training forward) on rendered clips of "a large red square moves d steadily
and wraps around on a black background", 16 frames (4 chunks of 4). The target chunk is noised to
sigma, the chunks before it are clean context; the model's clean-video estimate
x0_hat = x_t - sigma v_hat of that chunk is compared with the truth (MSE in [-1, 1] pixels; the
toy codec is lossless). Three cases:
- start: chunk 0 of a one-shot clip (no context: position and direction come from x_t and text).
- switch: chunk 2 after a prompt switch at frame 8 (the object keeps its place; only the caption
  says where it goes next).
- continue: chunk 2 of a one-shot clip (the context shows the motion). With the opposite word the
  target chunk's caption differs from its context's, so for the model it is a prompt switch to
  the opposite direction: a model that reads the word turns round.
Each is scored with the true caption and with the opposite direction word in the target chunk's
caption. A model that reads the word has a lower error with the true caption at high sigma; equal
errors mean the word is ignored there. After chunk 0, `8 ways` is the error of an estimate
that knows the place but not the direction: the mean of the chunk rendered in all 8 directions.

    python benchmarks/toy_caption_sensitivity.py --checkpoint plugins/toyworld/weights/toy_ar.safetensors
"""
from __future__ import annotations

import argparse
from pathlib import Path

import attrs
import numpy as np
import torch

from longlive.config import load_experiment
from longlive.assembly import build_parts
from longlive.run import make_run
from longlive.sampling import FlowMatching
from longlive.train.data import video_to_float
from longlive_plugins.toyworld.world import DIRECTIONS, MotionState, Scene, caption, render_shot

EXPERIMENT = "experiments/toy/eval_ar.toml"
CHUNK = 4  # latent = pixel frames per chunk (codec temporal factor 1)
OPPOSITE = {d: next(e for e, w in DIRECTIONS.items() if w == (-u[0], -u[1])) for d, u in DIRECTIONS.items()}
CASES = ("start", "switch", "continue")


def _scene(direction: str) -> Scene:
    return Scene(shape="square", color="red", background="black", direction=direction, speed="medium",
                 size="large", bounce=False)


def _clip(case: str, direction: str, before: str,
          rng: np.random.Generator) -> tuple[np.ndarray, list[Scene], int, MotionState | None]:
    """video uint8 [16, H, W, 3], the scene of each chunk, the target chunk, and the state the
    target chunk starts from (None for chunk 0)."""
    if case == "start":
        video, _ = render_shot(_scene(direction), 4 * CHUNK, rng=rng)
        return video, [_scene(direction)] * 4, 0, None
    first = _scene(before if case == "switch" else direction)
    head, state = render_shot(first, 2 * CHUNK, rng=rng)
    tail, _ = render_shot(_scene(direction), 2 * CHUNK, start_state=state)
    return np.concatenate([head, tail]), [first] * 2 + [_scene(direction)] * 2, 2, state


def _eight_ways(state: MotionState) -> torch.Tensor:
    """The mean of one chunk rendered in all 8 directions from `state`'s place: float32 [3, 4, H, W] in [-1, 1]."""
    chunks = [render_shot(attrs.evolve(state.scene, direction=d), CHUNK, start_state=state)[0] for d in DIRECTIONS]
    return torch.stack([video_to_float(c) for c in chunks]).mean(0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="toy DiT weights (safetensors)")
    parser.add_argument("--clips", type=int, default=8, help="clips per case and sigma (directions cycle)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.95, 0.9, 0.85])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = str(Path(args.checkpoint).resolve()).replace('"', '\\"')
    run = make_run(load_experiment(EXPERIMENT, [f'model.checkpoint="{path}"', 'run.device="cpu"']), create_dir=False)
    parts = build_parts(run)
    model, codec, text = parts.model, parts.codec, parts.text
    directions = list(DIRECTIONS)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    table = {}
    print(f"checkpoint {args.checkpoint}: x0 MSE of the target chunk, true word / opposite word")
    for case in args.cases:
        for sigma in args.sigmas:
            errors = {"true": [], "opposite": [], "8 ways": []}
            for k in range(args.clips):
                d = directions[k % 8]
                video, scenes, target, state = _clip(case, d, directions[(k + 3) % 8], rng)
                x0 = codec.encode(video_to_float(video)[None]).float()  # [1, C, F, h, w]
                sig = torch.full((1, x0.shape[2]), sigma)
                x_t = FlowMatching.add_noise(x0, torch.randn(x0.shape, generator=gen), sig)
                frames = slice(CHUNK * target, CHUNK * (target + 1))
                if state is not None:
                    ways = codec.encode(_eight_ways(state)[None]).float()  # the codec is a lossless pixel shuffle
                    errors["8 ways"].append(float((ways - x0[:, :, frames]).pow(2).mean()))
                for name, word in (("true", d), ("opposite", OPPOSITE[d])):
                    captions = [caption(s) for s in scenes]
                    captions[target] = caption(attrs.evolve(scenes[target], direction=word))
                    context = text.encode(captions)[None]  # [1, n_chunks, L, D]
                    with torch.no_grad():
                        v = model.forward_teacher(x0, x_t, FlowMatching.timestep(sig), context,
                                                  frames_per_block=CHUNK).float()
                    x0_hat = x_t - sigma * v
                    errors[name].append(float((x0_hat[:, :, frames] - x0[:, :, frames]).pow(2).mean()))
            table[(case, sigma)] = {k: float(np.mean(v)) for k, v in errors.items() if v}
            true, opp = table[(case, sigma)]["true"], table[(case, sigma)]["opposite"]
            ways = f"; 8 ways {table[(case, sigma)]['8 ways']:.4f}" if errors["8 ways"] else ""
            print(f"{case:8s} sigma {sigma:.2f}: {true:.4f} / {opp:.4f}  (opposite word {opp / true - 1:+.1%}){ways}")
    return table


if __name__ == "__main__":
    main()
