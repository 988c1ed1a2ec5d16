"""The toyworld plugin: registers the shapes world's codec, text encoder, DiT preset,
ToyBench metric and the `toy_data` task, and scores generated toy videos with ToyBench."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from longlive.model.presets import PREDICTIONS
from longlive.registry import hookimpl
from longlive.config import MAX_COUNT, MAX_FRAMES
from longlive.errors import ConfigError
from longlive.structure import in_range, one_of


if TYPE_CHECKING:
    from longlive.config import Experiment
    from longlive.run import RunContext
    from longlive_plugins.toyworld.codec import PatchCodec
    from longlive_plugins.toyworld.text import ToyTextEncoder

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class ToyWorldConfig:
    """The [plugins.toyworld] table."""

    size: int = attrs.field(default=64, validator=in_range(16, 512))  # square frames, pixels
    fps: float = attrs.field(default=8.0, validator=in_range(1.0, 60.0))
    spatial_factor: int = attrs.field(default=4, validator=in_range(1, 8))  # codec: 3*s*s*tau = 48
    temporal_factor: int = attrs.field(default=1, validator=in_range(1, 4))
    # The DiT preset "toy": width (heads of 64 channels, FFN 4x), depth, and what its head predicts.
    # The shipped weights are 320 / 6 / "sample"; an older 256-wide "velocity" model is the
    # comparison in experiments/toy/eval_bidirectional.toml.
    model_dim: int = attrs.field(default=320, validator=in_range(64, 1024))
    model_layers: int = attrs.field(default=6, validator=in_range(1, 32))
    prediction: str = attrs.field(default="sample", validator=one_of(PREDICTIONS))
    score: bool = True  # score generated videos with ToyBench (task generate)
    segment_s: float = attrs.field(default=10.0, validator=in_range(0.5, 600.0))  # ToyBench segments
    # The `toy_data` task: webdataset shards of rendered multi-shot clips.
    # Relative to the experiment file (.. allowed: the recipes write to the repository's data/) or
    # absolute; the task writes only <data_dir>/<split>/<split>-NNNNNN.tar and manifest.json there.
    data_dir: str = "data/toy"
    train_clips: int = attrs.field(default=2000, validator=in_range(1, MAX_COUNT))
    heldout_clips: int = attrs.field(default=64, validator=in_range(0, MAX_COUNT))
    clip_frames: int = attrs.field(default=64, validator=in_range(2, MAX_FRAMES))  # pixel frames per clip
    max_shots: int = attrs.field(default=3, validator=in_range(1, 8))
    switch_prob: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))  # boundary = motion switch, not cut
    clips_per_shard: int = attrs.field(default=250, validator=in_range(1, MAX_COUNT))
    data_workers: int = attrs.field(default=1, validator=in_range(1, 256))  # processes writing shards
    # The `toy_eval` task: ToyBench on held-out prompts (clip length = sampler.num_frames).
    eval_clips: int = attrs.field(default=16, validator=in_range(1, MAX_COUNT))
    eval_shots: int = attrs.field(default=1, validator=in_range(1, 8))
    # I2V held-out ToyBench: condition each clip on its own ground-truth first frame, and score
    # whether opening frames 1..eval_i2v_frames keep its object (colour, shape, position; first_frame.py).
    eval_i2v: bool = False
    eval_i2v_frames: int = attrs.field(default=8, validator=in_range(1, MAX_FRAMES))

    def __attrs_post_init__(self) -> None:
        if not self.data_dir.strip() or Path(self.data_dir).expanduser().resolve() == Path("/"):
            raise ConfigError(f"plugins.toyworld.data_dir: {self.data_dir!r} must name a data folder, not the "
                              f"working directory or the filesystem root")
        channels = 3 * self.spatial_factor ** 2 * self.temporal_factor
        if channels != 48:
            raise ConfigError(f"plugins.toyworld: 3 x spatial_factor^2 x temporal_factor = {channels}, "
                              f"but the latent layout has 48 channels; use (4, 1) or (2, 4)")
        if (self.clip_frames - 1) % self.temporal_factor and self.temporal_factor > 1:
            raise ConfigError(f"plugins.toyworld.clip_frames: {self.clip_frames} frames do not fit the causal codec "
                              f"layout 1 + {self.temporal_factor}*k; try {1 + self.temporal_factor * 16}")
        if self.model_dim % 64:
            raise ConfigError(f"plugins.toyworld.model_dim: {self.model_dim} must be a multiple of 64 (heads of 64)")
        if self.size % (self.spatial_factor * 2):
            raise ConfigError(f"plugins.toyworld.size: {self.size} must be a multiple of "
                              f"{self.spatial_factor * 2} (codec stride x DiT patch)")


def toy_preset(config: ToyWorldConfig):
    """The toy DiT: the Wan2.2-TI2V-5B architecture family, sized for a CPU."""
    from longlive.model.presets import DiTConfig

    dim = config.model_dim
    return DiTConfig(name="toy", dim=dim, ffn_dim=4 * dim, num_layers=config.model_layers, num_heads=dim // 64,
                     in_channels=48, out_channels=48, text_dim=64, text_len=16, freq_dim=256,
                     prediction=config.prediction)


class ToyWorld:
    """Shapes world: procedural data, patch codec, word text encoder, toy DiT preset, ToyBench."""

    Config = ToyWorldConfig

    def __init__(self, config: ToyWorldConfig) -> None:
        self.config = config
        self._frames: list = []  # the generated video's frames [3, t, H, W], kept for ToyBench at run end

    @hookimpl
    def longlive_register_components(self, registry) -> None:
        from longlive.components import CodecSpec

        c = self.config
        registry.add("dit_preset", "toy", toy_preset(c),
                     summary=f"toy-world DiT ({c.model_layers} layers, dim {c.model_dim}, {c.prediction} prediction)")
        registry.add("codec", "toy-patch", CodecSpec(build=self._build_codec, temporal_stride=c.temporal_factor,
                                                     spatial_stride=c.spatial_factor, latent_channels=48),
                     summary="lossless pixel-unshuffle codec, 48 channels")
        registry.add("text_encoder", "toy-words", self._build_text, summary="fixed word vectors, no download")
        registry.add("metric", "toybench", self.score, summary="ToyBench: colour, shape, motion, persistence")
        registry.add("task", "toy_data", self._make_data, summary="write toy-world webdataset shards")
        registry.add("task", "toy_eval", self._evaluate, summary="ToyBench on held-out prompts")

    @hookimpl
    def longlive_configure(self, experiment: Experiment) -> None:
        """ToyBench scores only captions of the toy world: check the prompts before generating."""
        g = experiment.generate
        if experiment.run.task != "generate" or not self.config.score or g is None:
            return
        from longlive.prompts import load_prompt_script
        from longlive_plugins.toyworld.world import parse_caption

        if g.prompt_script is None:
            prompts = [g.prompt]
        else:
            shots = load_prompt_script(g.prompt_script).shot
            prompts = [p for shot in shots for p in (shot.prompt, *(sw.prompt for sw in shot.switches))]
        for prompt in prompts:
            try:
                parse_caption(prompt)
            except ConfigError as e:
                key = "generate.prompt_script" if g.prompt_script else "generate.prompt"
                raise ConfigError(f"{key}: {e}; or set [plugins.toyworld] score = false") from None

    def _build_codec(self, run: RunContext) -> PatchCodec:
        from longlive_plugins.toyworld.codec import PatchCodec

        return PatchCodec(self.config.spatial_factor, self.config.temporal_factor)

    def _build_text(self, run: RunContext) -> ToyTextEncoder:
        from longlive_plugins.toyworld.text import ToyTextEncoder

        preset = run.preset
        return ToyTextEncoder(dim=preset.text_dim, text_len=preset.text_len).to(run.device)

    def score(self, video, schedule, fps: float) -> dict:
        """ToyBench of `video` [3, T, H, W] in [-1, 1] against [(start_frame, caption)]."""
        from longlive_plugins.toyworld.toybench import score_video

        result = score_video(video, fps=fps, schedule=schedule, segment_s=self.config.segment_s)
        return result.to_dict()

    def _make_data(self, run: RunContext) -> dict:
        from longlive_plugins.toyworld.shards import write_shards

        c = self.config
        data_dir = run.experiment.path(c.data_dir, "plugins.toyworld.data_dir")
        out = {}
        for split, clips in (("train", c.train_clips), ("heldout", c.heldout_clips)):  # disjoint seeds by split
            if clips:
                out[split] = [str(p) for p in write_shards(
                    data_dir / split, num_clips=clips, clips_per_shard=c.clips_per_shard,
                    seed=run.experiment.run.seed, split=split, frames=c.clip_frames, size=c.size, fps=c.fps,
                    max_shots=c.max_shots, chunk_frames=run.experiment.sampler.frames_per_chunk,
                    temporal_factor=c.temporal_factor, workers=c.data_workers, switch_prob=c.switch_prob)]
        return {"shards": out, "summary": f"wrote toy shards to {data_dir}"}

    def _evaluate(self, run: RunContext) -> dict:
        from longlive_plugins.toyworld.heldout import evaluate_heldout

        return evaluate_heldout(run, self.config)

    def _scoring(self, run) -> bool:
        return run.experiment.run.task == "generate" and self.config.score

    @hookimpl
    def longlive_frames_decoded(self, frames, run) -> None:
        # ToyBench reads the whole video (segments, switches): the float frames of video 0 are kept,
        # as the task used to keep them, so the scores are those of the decoder's output (not the mp4's)
        if self._scoring(run):
            self._frames.append(frames[0].clone())  # not a view that would keep the whole batch

    @hookimpl
    def longlive_run_end(self, run: RunContext, result: dict) -> None:
        frames, self._frames = self._frames, []
        if not self._scoring(run) or not frames or "schedule" not in result:
            return
        import torch

        from longlive_plugins.toyworld.toybench import plot, score_video

        from longlive.prompts import pixel_schedule

        schedule = pixel_schedule(result["schedule"], frames_per_chunk=run.experiment.sampler.frames_per_chunk,
                                  temporal_stride=self.config.temporal_factor)
        scores = score_video(torch.cat(frames, dim=1), fps=run.experiment.generate.fps, schedule=schedule,
                             segment_s=self.config.segment_s)
        result["toybench"] = scores.to_dict()
        result["summary"] = f"{result.get('summary', '')}\nToyBench\n{scores.format_table()}".strip()
        path = run.output_path("toybench.json")
        if path is not None:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(scores.to_dict(), indent=2) + "\n")
            os.replace(tmp, path)
            plot(scores, run.output_path("toybench.png"))
        run.log(0, {f"toybench/{k}": v for k, v in scores.to_dict()["overall"].items() if isinstance(v, float)})
