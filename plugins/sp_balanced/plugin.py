"""The sp_balanced plugin: the sequence-layout role filled by Ulysses SP for parallel.sp > 1.

Hooks: `longlive_make_sequence_layout` (UlyssesLayout when the run's mesh has sp > 1, else the
core's single-device layout), `longlive_parallelize_model` (the model fits the layout),
`longlive_chunk_done` (bytes its collectives sent for the chunk, logged) and `longlive_run_end`
(the totals in the run's result). For run.task = "train" the layout also splits teacher forcing
(teacher.py: Balanced SP, or the naive baseline).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs

from longlive.errors import ConfigError
from longlive.registry import hookimpl
from longlive.structure import in_range, one_of

if TYPE_CHECKING:
    import torch

    from longlive.config import Experiment
    from longlive.model.dit import WanDiT
    from longlive.parallel import ParallelMesh
    from longlive.pipeline import GenerationState
    from longlive.run import RunContext
    from longlive_plugins.sp_balanced.ulysses import UlyssesLayout

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class SPBalancedConfig:
    """The [plugins.sp_balanced] table (the SP size is the core's parallel.sp)."""

    # How K and V cross the all-to-all: "activation" (the model's dtype: output equals one device)
    # or "fp8" (E4M3 + an FP32 scale per token and head: fewer bytes, rounded K/V; inference only).
    kv_exchange: str = attrs.field(default="activation", validator=one_of(("activation", "fp8")))
    # How teacher-forcing training splits [clean ; noisy] over the SP group: "balanced" (rank r holds
    # the clean and noisy copies of its temporal slice) or "naive" (contiguous pieces; the baseline).
    training_layout: str = attrs.field(default="balanced", validator=one_of(("balanced", "naive")))
    # How a Balanced rank VAE-encodes its training sample: "halo" (its latent frames plus a left halo
    # of vae_halo latents, LongLive's 28; exact for the toy codec, approximate for the Wan2.2 VAE:
    # docs/parallel.md) or "whole" (the whole video, exact).
    vae_encode: str = attrs.field(default="halo", validator=one_of(("halo", "whole")))
    vae_halo: int = attrs.field(default=28, validator=in_range(0, 100_000))


class SPBalanced:
    """Ulysses sequence-parallel inference (the layout role); counts what its collectives move."""

    Config = SPBalancedConfig

    def __init__(self, config: SPBalancedConfig) -> None:
        self.config = config
        self.chunks = 0  # chunks whose traffic was logged in this run
        self.bytes_sent = 0
        self.last_chunk: dict | None = None

    @hookimpl
    def longlive_configure(self, experiment: Experiment) -> None:
        if experiment.parallel.sp > 1 and experiment.run.task == "train" and self.config.kv_exchange != "activation":
            raise ConfigError(f"plugins.sp_balanced.kv_exchange = {self.config.kv_exchange!r} with run.task = "
                              "\"train\": the FP8 exchange has no gradient; use kv_exchange = \"activation\"")
        train = experiment.train if experiment.run.task == "train" else None
        if experiment.parallel.sp > 1 and isinstance(train, dict):
            self._check_training_frames(experiment.parallel.sp, int(train.get("num_frames", 16)),
                                        experiment.sampler.frames_per_chunk)
        if experiment.parallel.sp > 1 and isinstance(train, dict) and train.get("eval_every", 0):
            raise ConfigError(f"train.eval_every = {train['eval_every']} with parallel.sp = {experiment.parallel.sp}: "
                              "evaluation runs on rank 0 alone, outside the SP group; set train.eval_every = 0 and "
                              "evaluate the exported weights with `longlive run` afterwards")

    def _check_training_frames(self, sp: int, frames: int, frames_per_chunk: int) -> None:
        """Each rank's frames must be whole chunks (one prompt per chunk); one line naming the fix."""
        held = frames // sp if self.config.training_layout == "balanced" else 2 * frames // sp
        total = frames if self.config.training_layout == "balanced" else 2 * frames
        if total % sp or held % frames_per_chunk:
            step = sp * frames_per_chunk // (1 if self.config.training_layout == "balanced" else 2)
            raise ConfigError(f"train.num_frames={frames}: with parallel.sp={sp} and training_layout = "
                              f"\"{self.config.training_layout}\" each rank must hold whole chunks of "
                              f"sampler.frames_per_chunk={frames_per_chunk} latent frames; use a multiple of {step}")

    @hookimpl
    def longlive_make_sequence_layout(self, mesh: ParallelMesh, run: RunContext) -> UlyssesLayout | None:
        if mesh.sp == 1:
            return None  # the core's single-device layout
        from longlive_plugins.sp_balanced.ulysses import UlyssesLayout

        geometry, preset = run.geometry, run.preset
        if run.experiment.run.task == "train":
            from longlive_plugins.sp_balanced.teacher import TeacherForcingUlysses

            halo = self.config.vae_halo if self.config.vae_encode == "halo" else None
            layout = TeacherForcingUlysses(mesh, training_layout=self.config.training_layout, vae_halo=halo,
                                           temporal_stride=run.codec_spec.temporal_stride)
            layout.check(num_heads=preset.num_heads, chunk_tokens=geometry.chunk_tokens)
            log.info("sp_balanced: %s teacher-forcing layout, sp %d (rank %d of the group), %d of %d heads per rank",
                     self.config.training_layout, mesh.sp, mesh.sp_rank, preset.num_heads // mesh.sp,
                     preset.num_heads)
            return layout
        layout = UlyssesLayout(mesh, kv_exchange=self.config.kv_exchange)
        layout.check(num_heads=preset.num_heads, chunk_tokens=geometry.chunk_tokens)
        log.info("sp_balanced: Ulysses layout, sp %d (rank %d of the group): %d of %d tokens and %d of %d heads "
                 "per rank, K/V exchanged as %s", mesh.sp, mesh.sp_rank, geometry.chunk_tokens // mesh.sp,
                 geometry.chunk_tokens, preset.num_heads // mesh.sp, preset.num_heads, self.config.kv_exchange)
        return layout

    @hookimpl
    def longlive_parallelize_model(self, model: WanDiT, role: str, run: RunContext) -> None:
        """Inference needs no change to the model (the layout works in the forward); check it fits."""
        run.layout.check(num_heads=model.config.num_heads, chunk_tokens=run.geometry.chunk_tokens,
                         where=f"parallel.sp (model {role})")

    @hookimpl
    def longlive_chunk_done(self, index: int, latents: torch.Tensor, state: GenerationState,
                            run: RunContext) -> None:
        traffic = state.cache.spec.layout.take_traffic()
        if not traffic["bytes_sent"]:
            return
        self.chunks += 1
        self.bytes_sent += traffic["bytes_sent"]
        self.last_chunk = traffic
        (log.info if self.chunks == 1 else log.debug)(
            "sp_balanced: chunk %d: this rank sent %.2f MiB (%d all-to-all, %d all-gather, %d all-reduce; "
            "computed from shapes)", index, traffic["bytes_sent"] / 2**20, traffic["all_to_all"],
            traffic["all_gather"], traffic["all_reduce"])
        run.log(index, {"sp/bytes_sent_per_rank": float(traffic["bytes_sent"])})

    @hookimpl
    def longlive_run_end(self, run: RunContext, result: dict) -> None:
        if not self.chunks:
            return
        result["sp"] = {**run.mesh.describe(), "layout": run.layout.name, "chunks": self.chunks,
                        "bytes_sent_per_rank": self.bytes_sent, "bytes_sent_per_rank_per_chunk": self.bytes_sent
                        // self.chunks, "last_chunk": self.last_chunk}
