"""The `generate` task: check the inputs, render the prompt schedule, stream the outputs.

Inputs are checked before any weights load (prompt script, image size, frame counts, preset).
Outputs, in the run directory, written while the video is generated (host memory stays bounded
for any length): `video.mp4` (`video_<i>.mp4` for batch > 1; `*.partial.mp4` until the run
succeeds, and kept under that name when it fails: longlive/video_sink.py), optionally the
latents as parts under `latents/` (longlive/latent_sink.py), TensorBoard scalars and a
frame-strip preview sampled from the stream. Plugins see the frames through
`longlive_frames_decoded`. Under torchrun (sequence parallelism) only the writer rank of the
device mesh decodes and writes; the others compute their share of every chunk.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from longlive.assembly import build_parts, render
from longlive.errors import ConfigError
from longlive.prompts import chunk_prompts, load_prompt_script, single_prompt

if TYPE_CHECKING:
    from pathlib import Path

    from longlive.config import SamplerConfig
    from longlive.run import RunContext

log = logging.getLogger(__name__)


def generate_video(run: RunContext) -> dict:
    """The generate task: inputs are checked before any weights load."""
    exp = run.experiment
    s, g = exp.sampler, exp.generate
    if run.mesh.dp > 1:
        raise ConfigError(f"generate renders one video per launch, but {run.mesh.world} processes with parallel.sp="
                          f"{run.mesh.sp} make {run.mesh.dp} data-parallel groups; launch parallel.sp processes "
                          f"(torchrun --nproc_per_node={run.mesh.sp}) or set parallel.sp = {run.mesh.world}")
    run.geometry.chunks(s.num_frames)
    script = load_prompt_script(g.prompt_script) if g.prompt_script else single_prompt(g.prompt, s.num_frames)
    schedule = chunk_prompts(script, num_frames=s.num_frames, frames_per_chunk=s.frames_per_chunk,
                             where="generate.prompt_script" if g.prompt_script else "generate.prompt")
    image = _read_image(g.image, s) if g.image else None
    parts = build_parts(run)
    image_latent = None
    if image is not None:  # I2V: the image becomes latent frame 0 (a 1-frame encode)
        image_latent = parts.codec.encode(image[None, :, None].expand(g.batch, -1, -1, -1, -1).to(run.device, run.dtype))
    outputs = GenerateOutputs(run)
    started = time.perf_counter()
    try:
        rendered = render(run, parts, schedule, batch=g.batch, image_latent=image_latent,
                          on_frames=outputs.add_frames, on_latents=outputs.add_latents)
        files = outputs.finish()
    except BaseException:
        outputs.abort()
        raise
    elapsed = time.perf_counter() - started
    frames, fps = rendered.frames, rendered.frames / elapsed
    run.log(0, {"generate/fps_end_to_end": fps, "generate/seconds": elapsed})
    run.monitor.text("generate/prompts", "\n".join(f"chunk {c.index}: {c.prompt}" for c in rendered.chunks))
    return {"frames": frames, "latent_frames": len(rendered.chunks) * s.frames_per_chunk, "seconds": elapsed,
            "fps": fps, "files": files, "schedule": rendered.chunks,
            "summary": f"generated {frames} frames ({frames / g.fps:.1f} s of video) in {elapsed:.1f} s"}


class GenerateOutputs:
    """Where the generate task's frames and latents go as they are made: the mp4 sink, the latent
    parts, the TensorBoard preview and the `longlive_frames_decoded` hook."""

    def __init__(self, run: RunContext) -> None:
        from longlive.latent_sink import LatentSink
        from longlive.monitor import PreviewFrames
        from longlive.video_sink import VideoSink

        g = run.experiment.generate
        self.run, self.frames = run, 0
        self.preview = PreviewFrames(run.geometry.pixel_frames(run.experiment.sampler.num_frames))
        self.video = self.latents = None
        if run.run_dir is not None and run.mesh.is_writer:  # one rank of a launch writes the files
            names = ["video.mp4"] if g.batch == 1 else [f"video_{i}.mp4" for i in range(g.batch)]
            self.video = VideoSink([run.run_dir / n for n in names], g.fps)
            if g.save_latents:
                self.latents = LatentSink(run.run_dir / "latents", chunks_per_file=g.latent_chunks_per_file)

    def add_frames(self, frames: torch.Tensor) -> None:
        """The next decoded piece [B, 3, t, H, W] in [-1, 1] (CPU)."""
        if self.video is not None:
            self.video.write(frames)
        self.preview.add(frames[0])
        self.run.hook.longlive_frames_decoded(frames=frames, first_frame=self.frames, run=self.run)
        self.frames += frames.shape[2]

    def add_latents(self, latents: torch.Tensor) -> None:
        if self.latents is not None:
            self.latents.write(latents)

    def finish(self) -> list[str]:
        """The video files under their final names; latents and preview written."""
        if self.latents is not None:
            self.latents.flush()
        self.run.monitor.video_preview("generate/preview", self.preview.frames())
        return [str(p) for p in self.video.finish()] if self.video is not None else []

    def abort(self) -> list[Path]:
        """After a failure: write the pending latents, close the videos under their partial names."""
        if self.latents is not None:
            try:
                self.latents.flush()
            except Exception:  # the run's own error is the one to report
                log.warning("could not write the pending latents after the failure", exc_info=True)
        return self.video.abort() if self.video is not None else []


def _read_image(path: str, s: SamplerConfig) -> torch.Tensor:
    from longlive.media import read_image

    return read_image(path, height=s.height, width=s.width)
