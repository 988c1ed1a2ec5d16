"""The `generate` task: check the inputs, render the prompt schedule, write the outputs.

Inputs are checked before any weights load (prompt script, image size, frame counts, preset).
Outputs, in the run directory: `video.mp4` (`video_<i>.mp4` for batch > 1), optionally
`latents.safetensors`, TensorBoard scalars and a frame-strip preview.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from longlive.assembly import build_parts, render
from longlive.prompts import chunk_prompts, load_prompt_script, single_prompt

if TYPE_CHECKING:
    from longlive.assembly import Rendered
    from longlive.config import SamplerConfig
    from longlive.run import RunContext

log = logging.getLogger(__name__)


def generate_video(run: RunContext) -> dict:
    """The generate task: inputs are checked before any weights load."""
    exp = run.experiment
    s, g = exp.sampler, exp.generate
    run.geometry.chunks(s.num_frames)
    script = load_prompt_script(g.prompt_script) if g.prompt_script else single_prompt(g.prompt, s.num_frames)
    schedule = chunk_prompts(script, num_frames=s.num_frames, frames_per_chunk=s.frames_per_chunk,
                             where="generate.prompt_script" if g.prompt_script else "generate.prompt")
    image = _read_image(g.image, s) if g.image else None
    parts = build_parts(run)
    image_latent = None
    if image is not None:  # I2V: the image becomes latent frame 0 (a 1-frame encode)
        image_latent = parts.codec.encode(image[None, :, None].expand(g.batch, -1, -1, -1, -1).to(run.device, run.dtype))
    started = time.perf_counter()
    rendered = render(run, parts, schedule, batch=g.batch, image_latent=image_latent)
    return _write_outputs(run, rendered, time.perf_counter() - started)


def _read_image(path: str, s: SamplerConfig) -> torch.Tensor:
    from longlive.media import read_image

    return read_image(path, height=s.height, width=s.width)


def _write_outputs(run: RunContext, rendered: Rendered, elapsed: float) -> dict:
    from longlive.media import to_uint8_frames, write_mp4
    from longlive.model.checkpoint import save_safetensors_atomic

    g = run.experiment.generate
    video, latents = rendered.video, rendered.latents
    frames = video.shape[2]
    files = []
    for i in range(video.shape[0]):
        name = "video.mp4" if video.shape[0] == 1 else f"video_{i}.mp4"
        if run.run_dir is not None:
            files.append(str(write_mp4(run.run_dir / name, to_uint8_frames(video[i]), g.fps)))
    if g.save_latents and run.run_dir is not None:
        save_safetensors_atomic({"latents": latents}, run.run_dir / "latents.safetensors",
                                metadata={"layout": "[B, C, F, H, W]"})
    fps = frames / elapsed
    run.log(0, {"generate/fps_end_to_end": fps, "generate/seconds": elapsed})
    run.monitor.video_preview("generate/preview", video[0])
    run.monitor.text("generate/prompts", "\n".join(f"chunk {c.index}: {c.prompt}" for c in rendered.chunks))
    return {"frames": frames, "latent_frames": latents.shape[2], "seconds": elapsed, "fps": fps, "files": files,
            "video": video, "schedule": rendered.chunks,
            "summary": f"generated {frames} frames ({frames / g.fps:.1f} s of video) in {elapsed:.1f} s"}
