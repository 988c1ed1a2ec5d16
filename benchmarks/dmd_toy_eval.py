"""Held-out ToyBench of DMD students against the undistilled toy AR model at 8, 4 and 2 steps.

Every variant generates the same held-out clips (toyworld's `heldout_script`, the prompts of
experiments/toy/eval_ar.toml) from the same noise; per variant: the ToyBench means over clips,
and the relative L2 distance of its latents from the undistilled model's latents at the same
step count (0 for the undistilled model itself: how far distillation moved the sampler's output).

    python benchmarks/dmd_toy_eval.py --clips 8 --frames 32 --device cpu \
        --student 2=runs/toy_dmd_2step/student_lora.safetensors --out dmd_toy_eval.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def evaluate(experiment: Path, steps: int, lora: str | None, clips: int, frames: int, device: str) -> dict:
    from longlive.assembly import build_parts, render
    from longlive.config import load_experiment
    from longlive.prompts import chunk_prompts, pixel_schedule
    from longlive.run import make_run
    from longlive_plugins.toyworld.heldout import METRICS, heldout_script
    from longlive_plugins.toyworld.shards import clip_seed
    from longlive_plugins.toyworld.toybench import score_video

    sets = [f'run.device="{device}"', f"sampler.steps={steps}", f"sampler.num_frames={frames}", f"plugins.toyworld.eval_clips={clips}"]
    if lora is not None:
        sets.append(f'model.lora="{Path(lora).resolve()}"')
    run = make_run(load_experiment(experiment, sets), create_dir=False)
    config, s = run.plugin_configs["toyworld"], run.experiment.sampler
    parts = build_parts(run)
    scores, latents = [], []
    for i in range(clips):
        script = heldout_script(clip_seed(run.experiment.run.seed, "heldout", i), latent_frames=frames,
                                frames_per_chunk=s.frames_per_chunk, stride=config.temporal_factor,
                                shots=config.eval_shots, size=config.size, fps=config.fps)
        schedule = chunk_prompts(script, num_frames=frames, frames_per_chunk=s.frames_per_chunk)
        out = render(run, parts, schedule, show_progress=False, keep_video=True, keep_latents=True)
        prompts = pixel_schedule(out.chunks, frames_per_chunk=s.frames_per_chunk, temporal_stride=config.temporal_factor)
        scores.append(score_video(out.video[0], fps=config.fps, schedule=prompts,
                                  segment_s=config.segment_s).to_dict()["overall"])
        latents.append(out.latents.float().cpu())
    mean = {m: sum(c[m] for c in scores if c[m] is not None) / max(1, sum(c[m] is not None for c in scores))
            for m in METRICS}
    return {"steps": steps, "lora": lora, "mean": mean, "latents": latents}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="experiments/toy/eval_ar.toml")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--steps", default="8,4,2", help="undistilled model's step counts")
    parser.add_argument("--student", action="append", default=[], help="STEPS=PATH of a student LoRA")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    variants = [(int(n), None) for n in args.steps.split(",")]
    variants += [(int(spec.split("=", 1)[0]), spec.split("=", 1)[1]) for spec in args.student]
    rows, base = [], {}
    for steps, lora in variants:
        started = time.perf_counter()
        result = evaluate(Path(args.experiment), steps, lora, args.clips, args.frames, args.device)
        if lora is None:
            base[steps] = result["latents"]
        ref = base.get(steps)
        distance = None
        if ref is not None:
            num = sum(float((a - b).pow(2).sum()) for a, b in zip(result["latents"], ref))
            den = sum(float(b.pow(2).sum()) for b in ref)
            distance = (num / den) ** 0.5
        row = {"model": "student" if lora else "undistilled", "steps": steps, "lora": lora,
               "distance_from_undistilled": distance, **result["mean"], "seconds": time.perf_counter() - started}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"clips": args.clips, "frames": args.frames, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
