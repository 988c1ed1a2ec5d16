"""The dmd plugin: its [plugins.dmd] table and the training-algorithm role it fills."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs

from longlive.config import MAX_FRAMES, MAX_STEPS
from longlive.errors import ConfigError
from longlive.registry import hookimpl
from longlive.structure import in_range, one_of, optional

if TYPE_CHECKING:
    from longlive.config import Experiment
    from longlive.train.algorithm import TrainingContext
    from longlive_plugins.dmd.algorithm import DMDAlgorithm

log = logging.getLogger(__name__)

NETWORKS = ("generator", "critic")


@attrs.frozen(kw_only=True)
class DMDConfig:
    """The [plugins.dmd] table (LongLive 2.0's train_dmd.yaml values are the defaults).

    The student's sampler and step count are [sampler]'s (the rollout uses the inference sampler);
    its LoRA rank is train.lora_rank (0: a full generator); [quant] picks each role's format.
    """

    teacher: str | None = None  # real score weights (default: train.init_from), frozen
    critic_from: str | None = None  # fake score initial weights (default: train.init_from)
    real_guidance: float = attrs.field(default=3.0, validator=in_range(0.0, 100.0))  # cond + g (cond - uncond)
    generator_every: int = attrs.field(default=5, validator=in_range(1, MAX_STEPS))  # critic: every step
    generator_lr: float = attrs.field(default=1e-5, validator=in_range(0.0, 1.0))
    critic_lr: float = attrs.field(default=2e-6, validator=in_range(0.0, 1.0))
    t_min: float = attrs.field(default=20.0, validator=in_range(0.0, 1000.0))  # after the timestep shift
    t_max: float = attrs.field(default=980.0, validator=in_range(0.0, 1000.0))
    # Critic adapters when the generator is full (train.lora_rank = 0); else train.lora_rank is used.
    critic_lora_rank: int = attrs.field(default=0, validator=in_range(0, 4096))
    critic_lora_alpha: float | None = attrs.field(default=None, validator=optional(in_range(1e-6, 1e6)))
    critic_time_weighting: str = attrs.field(default="uniform", validator=one_of(("uniform", "gaussian")))
    ema: tuple[str, ...] = ()  # networks with an EMA (LongLive: none in LoRA mode)
    same_exit_across_chunks: bool = True  # one exit step for every chunk of a rollout (LongLive's default)
    # The last loss_frames latent frames carry the loss (LongLive's slice_last_frames); default all.
    loss_frames: int | None = attrs.field(default=None, validator=optional(in_range(1, MAX_FRAMES)))
    i2v: bool = False  # frame 0 of the first chunk is the image latent (the sample's first latent frame)

    def __attrs_post_init__(self) -> None:
        if self.t_min >= self.t_max:
            raise ConfigError(f"plugins.dmd.t_min: {self.t_min} must be below t_max = {self.t_max}")
        bad = [n for n in self.ema if n not in NETWORKS]
        if bad:
            raise ConfigError(f"plugins.dmd.ema: {bad} are not trained networks; use names of {list(NETWORKS)}")


class DMD:
    """Registers the dmd training algorithm."""

    Config = DMDConfig

    def __init__(self, config: DMDConfig) -> None:
        self.config = config

    @hookimpl
    def longlive_configure(self, experiment: Experiment) -> None:
        if experiment.run.task != "train" or experiment.train is None:
            raise ConfigError(f"plugins.dmd distils in training: set run.task = \"train\" with a [train] table "
                              f"(run.task is {experiment.run.task!r}); generate with the student via [model] lora")
        if experiment.parallel.sp > 1:
            raise ConfigError(f"plugins.dmd under parallel.sp = {experiment.parallel.sp}: DMD's rollouts and critic are "
                              f"not sequence-parallel yet; set parallel.sp = 1 (data parallelism over processes works)")
        s = experiment.sampler
        from longlive.structure import structure
        from longlive.train.config import TrainConfig

        train = structure(experiment.train, TrainConfig, where="train")
        if train.data_parallel != "ddp":
            raise ConfigError(f"train.data_parallel = {train.data_parallel!r} with plugins.dmd: DMD's three networks "
                              f"are not sharded yet (its rollouts run the generator outside FSDP); set "
                              f"train.data_parallel = \"ddp\"")
        frames = train.num_frames
        loss_frames = self.config.loss_frames
        if loss_frames is not None and (loss_frames % s.frames_per_chunk or loss_frames > frames):
            raise ConfigError(f"plugins.dmd.loss_frames: {loss_frames} must be a multiple of "
                              f"sampler.frames_per_chunk = {s.frames_per_chunk} and at most train.num_frames = "
                              f"{frames}")
        if s.guidance != 1.0:
            log.warning("plugins.dmd: sampler.guidance = %g is ignored by the rollout (the student runs without "
                        "CFG); the teacher's guidance is plugins.dmd.real_guidance", s.guidance)

    @hookimpl
    def longlive_make_training_algorithm(self, context: TrainingContext) -> DMDAlgorithm:
        from longlive_plugins.dmd.algorithm import DMDAlgorithm

        return DMDAlgorithm(context, self.config)
