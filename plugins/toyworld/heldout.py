"""The `toy_eval` task: ToyBench of a model on held-out prompts (scenes no training clip has).

Clip i draws its shots from the held-out seed `clip_seed(run.seed, "heldout", i)` (disjoint from
every training seed), with cuts on chunk boundaries; the model generates it chunk by chunk
through the same path as `longlive run` (render), and ToyBench scores it against the prompts.
The result is the mean of each metric over clips, plus the per-clip numbers.
"""
from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING

from longlive.errors import ConfigError
from longlive.monitor import progress
from longlive.prompts import PromptScript, Shot, chunk_prompts, pixel_schedule


if TYPE_CHECKING:
    from longlive.run import RunContext
    from longlive_plugins.toyworld.plugin import ToyWorldConfig

log = logging.getLogger(__name__)

METRICS = ("color", "shape", "motion", "persistence", "background")


def heldout_script(seed: int, *, latent_frames: int, frames_per_chunk: int, stride: int, shots: int,
                   size: int, fps: float) -> PromptScript:
    """The prompt script of one held-out clip: `shots` shots cut on chunk boundaries."""
    from longlive_plugins.toyworld.world import sample_clip

    pixel = 1 + stride * (latent_frames - 1)
    starts = [1 + stride * (c * frames_per_chunk - 1) for c in range(1, latent_frames // frames_per_chunk)]
    clip = sample_clip(seed, num_shots=shots, frames=pixel, size=size, fps=fps, cut_candidates=starts,
                       min_shot_frames=stride * frames_per_chunk)
    bounds = [0] + [starts.index(s.start_frame) + 1 for s in clip.shots[1:]] + [latent_frames // frames_per_chunk]
    return PromptScript(shot=tuple(Shot(prompt=s.caption, frames=(b - a) * frames_per_chunk)
                                   for s, a, b in zip(clip.shots, bounds[:-1], bounds[1:])))


def evaluate_heldout(run: RunContext, config: ToyWorldConfig) -> dict:
    from longlive.assembly import build_parts, render
    from longlive_plugins.toyworld.shards import clip_seed
    from longlive_plugins.toyworld.toybench import score_video

    s = run.experiment.sampler
    if s.num_frames % s.frames_per_chunk:
        raise ConfigError(f"sampler.num_frames: {s.num_frames} is not a multiple of sampler.frames_per_chunk")
    parts = build_parts(run)
    per_clip = []
    for i in progress(range(config.eval_clips), desc="held-out clips", unit="clip"):
        script = heldout_script(clip_seed(run.experiment.run.seed, "heldout", i), latent_frames=s.num_frames,
                                frames_per_chunk=s.frames_per_chunk, stride=config.temporal_factor,
                                shots=config.eval_shots, size=config.size, fps=config.fps)
        schedule = chunk_prompts(script, num_frames=s.num_frames, frames_per_chunk=s.frames_per_chunk)
        rendered = render(run, parts, schedule, show_progress=False, keep_video=True)
        video, used = rendered.video, rendered.chunks
        prompts = pixel_schedule(used, frames_per_chunk=s.frames_per_chunk, temporal_stride=config.temporal_factor)
        scores = score_video(video[0], fps=config.fps, schedule=prompts, segment_s=config.segment_s)
        per_clip.append(scores.to_dict()["overall"])
    mean = {m: _mean([c[m] for c in per_clip]) for m in METRICS}
    result = {"clips": config.eval_clips, "seconds_per_clip": s.num_frames / config.fps, "mean": mean,
              "per_clip": per_clip, "checkpoint": run.experiment.model.checkpoint, "steps": s.steps}
    path = run.output_path("toy_eval.json")
    if path is not None:
        path.write_text(json.dumps(result, indent=2) + "\n")
    run.log(0, {f"toy_eval/{m}": v for m, v in mean.items() if math.isfinite(v)})
    result["summary"] = "held-out ToyBench, mean over {} clips of {:.0f} s: {}".format(
        config.eval_clips, s.num_frames / config.fps, ", ".join(f"{m} {v:.3f}" for m, v in mean.items()))
    return result


def _mean(values: list) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan
