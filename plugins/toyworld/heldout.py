"""The `toy_eval` task: ToyBench of a model on held-out prompts (scenes no training clip has).

Clip i draws its shots from the held-out seed `clip_seed(run.seed, "heldout", i)` (disjoint from
every training seed), with cuts on chunk boundaries; the model generates it chunk by chunk
through the same path as `longlive run` (render), and ToyBench scores it against the prompts.
The result is the mean of each metric over clips, its standard error over clips, and the per-clip
numbers.

With `eval_i2v` each clip is image-conditioned (I2V) on its own ground-truth first frame (the
frame the held-out clip starts with, encoded alone into latent frame 0, as `generate.image`
does), and `first_frame` scores whether the generated opening frames keep that frame's object:
colour, shape and position (`first_frame.py`). The same score is reported without `eval_i2v`,
where it measures the chance level of a text-only clip.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import TYPE_CHECKING

from longlive.errors import ConfigError
from longlive.monitor import progress
from longlive.prompts import PromptScript, Shot, chunk_prompts, pixel_schedule


if TYPE_CHECKING:
    from longlive.run import RunContext
    from longlive_plugins.toyworld.plugin import ToyWorldConfig
    from longlive_plugins.toyworld.world import Clip

log = logging.getLogger(__name__)

METRICS = ("color", "shape", "motion", "persistence", "background")


def heldout_script(seed: int, *, latent_frames: int, frames_per_chunk: int, stride: int, shots: int,
                   size: int, fps: float) -> PromptScript:
    """The prompt script of one held-out clip: `shots` shots cut on chunk boundaries."""
    return heldout_clip(seed, latent_frames=latent_frames, frames_per_chunk=frames_per_chunk, stride=stride,
                        shots=shots, size=size, fps=fps)[1]


def heldout_clip(seed: int, *, latent_frames: int, frames_per_chunk: int, stride: int, shots: int,
                 size: int, fps: float) -> tuple[Clip, PromptScript]:
    """One held-out clip: its ground-truth video and shots (a `Clip`) and its prompt script."""
    from longlive_plugins.toyworld.world import sample_clip

    pixel = 1 + stride * (latent_frames - 1)
    starts = [1 + stride * (c * frames_per_chunk - 1) for c in range(1, latent_frames // frames_per_chunk)]
    clip = sample_clip(seed, num_shots=shots, frames=pixel, size=size, fps=fps, cut_candidates=starts,
                       min_shot_frames=stride * frames_per_chunk)
    bounds = [0] + [starts.index(s.start_frame) + 1 for s in clip.shots[1:]] + [latent_frames // frames_per_chunk]
    return clip, PromptScript(shot=tuple(Shot(prompt=s.caption, frames=(b - a) * frames_per_chunk)
                                         for s, a, b in zip(clip.shots, bounds[:-1], bounds[1:])))


def evaluate_heldout(run: RunContext, config: ToyWorldConfig) -> dict:
    from longlive.assembly import build_parts, render
    from longlive_plugins.toyworld.first_frame import KEPT, mean_and_stderr, score_first_frame
    from longlive_plugins.toyworld.shards import clip_seed
    from longlive_plugins.toyworld.toybench import score_video

    s = run.experiment.sampler
    if s.num_frames % s.frames_per_chunk:
        raise ConfigError(f"sampler.num_frames: {s.num_frames} is not a multiple of sampler.frames_per_chunk")
    pixel_frames = 1 + config.temporal_factor * (s.num_frames - 1)
    opening = config.eval_i2v_frames  # the first-frame score's opening frames 1..opening
    if opening >= pixel_frames:
        if config.eval_i2v:
            raise ConfigError(f"plugins.toyworld.eval_i2v_frames: {opening} opening frames need a clip of more than "
                              f"{opening} frames, but it has {pixel_frames}; lower it")
        opening = pixel_frames - 1  # text-only clips: the chance level, over the frames there are
    parts = build_parts(run)
    per_clip = []
    for i in progress(range(config.eval_clips), desc="held-out clips", unit="clip"):
        clip, script = heldout_clip(clip_seed(run.experiment.run.seed, "heldout", i), latent_frames=s.num_frames,
                                    frames_per_chunk=s.frames_per_chunk, stride=config.temporal_factor,
                                    shots=config.eval_shots, size=config.size, fps=config.fps)
        schedule = chunk_prompts(script, num_frames=s.num_frames, frames_per_chunk=s.frames_per_chunk)
        image_latent = _image_latent(clip.video[0], parts.codec, run) if config.eval_i2v else None
        rendered = render(run, parts, schedule, image_latent=image_latent, show_progress=False, keep_video=True)
        video, used = rendered.video, rendered.chunks
        prompts = pixel_schedule(used, frames_per_chunk=s.frames_per_chunk, temporal_stride=config.temporal_factor)
        scores = score_video(video[0], fps=config.fps, schedule=prompts, segment_s=config.segment_s)
        first = score_first_frame(video[0], clip.video, frames=opening).to_dict() if opening else None
        per_clip.append({**scores.to_dict()["overall"], "first_frame": first})
    stats = {m: mean_and_stderr([c[m] for c in per_clip]) for m in METRICS}
    first_keys = (*KEPT, "position_error_px")
    first_stats = {m: mean_and_stderr([(c["first_frame"] or {}).get(m) for c in per_clip]) for m in first_keys}
    mean = {m: v[0] for m, v in stats.items()}
    result = {"clips": config.eval_clips, "seconds_per_clip": s.num_frames / config.fps, "i2v": config.eval_i2v,
              "mean": mean, "stderr": {m: v[1] for m, v in stats.items()},
              "first_frame": {"frames": opening, "mean": {m: v[0] for m, v in first_stats.items()},
                              "stderr": {m: v[1] for m, v in first_stats.items()}},
              "per_clip": per_clip, "checkpoint": run.experiment.model.checkpoint, "steps": s.steps}
    path = run.output_path("toy_eval.json")
    if path is not None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(_finite(result), indent=2) + "\n")
        os.replace(tmp, path)
    run.log(0, {f"toy_eval/{m}": v for m, v in mean.items() if math.isfinite(v)})
    run.log(0, {f"toy_eval/first_frame/{m}": v[0] for m, v in first_stats.items() if math.isfinite(v[0])})
    title = "held-out ToyBench" + (" (I2V: each clip conditioned on its first frame)" if config.eval_i2v else "")
    result["summary"] = "{}, mean over {} clips of {:.0f} s: {}; first frame kept (frames 1-{}): {}".format(
        title, config.eval_clips,
        s.num_frames / config.fps, ", ".join(f"{m} {v:.3f}" for m, v in mean.items()), opening,
        ", ".join(f"{m} {first_stats[m][0]:.3f}" for m in first_keys))
    return result


def _image_latent(frame, codec, run: RunContext):
    """Latent frame 0 of an I2V clip from a ground-truth frame uint8 [H, W, 3]: the frame encoded
    alone, as the generate task encodes `generate.image`."""
    import torch

    image = torch.from_numpy(frame).permute(2, 0, 1).float().div(127.5).sub(1)  # [3, H, W] in [-1, 1]
    return codec.encode(image[None, :, None].to(run.device, run.dtype))  # [1, C, 1, h, w]


def _finite(value):
    """`value` with NaN floats as None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _mean(values: list) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan
