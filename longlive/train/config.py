"""[train]: the TrainConfig schema (every training default lives here) and its cross-table checks."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs

from longlive.errors import ConfigError
from longlive.config import MAX_COUNT, MAX_FRAMES, MAX_STEPS
from longlive.structure import file_name, in_range, one_of, optional, structure


if TYPE_CHECKING:
    from longlive.run import CheckedExperiment, RunContext

log = logging.getLogger(__name__)

MODES = ("teacher_forcing", "bidirectional")
TIME_WEIGHTINGS = ("gaussian", "uniform")
DATA_PARALLEL = ("ddp", "fsdp2")
FSDP_PARAM_DTYPES = ("auto", "fp32", "bf16")
FSDP_SHARDS = ("world", "dp")


@attrs.frozen(kw_only=True)
class ErrorRecyclingConfig:
    """[train.error_recycling]: buffers of the model's own errors injected into its inputs
    (longlive/train/error_recycling.py). Off by default; teacher forcing only, not under parallel.sp > 1."""

    enabled: bool = False
    buckets: int = attrs.field(default=10, validator=in_range(1, 1000))  # timestep buckets over [0, 1000]
    capacity: int = attrs.field(default=32, validator=in_range(1, 100_000))  # frames per bucket and kind (ring)
    # Per-sample probabilities: the x0 error added to the clean context, to the clean latent before
    # noising, and the velocity error x (1 - sigma) added to the noise.
    context_probability: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))
    latent_probability: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
    noise_probability: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))


@attrs.frozen(kw_only=True)
class TrainConfig:
    """[train]: data, objective, optimizer, schedule and outputs of a training run.

    Frames are latent frames. Batches are per rank: the global batch of one optimizer step is
    batch_size x grad_accum x world size. The seed is run.seed.
    """

    mode: str = attrs.field(default="teacher_forcing", validator=one_of(MODES))
    dataset: str = "shards"  # a "dataset" component
    data: str  # shard file or brace/glob pattern, relative to the experiment file
    eval_data: str | None = None  # prompts for evaluation come from its first sample (default: data)
    # Latent frames per sample; a multiple of sampler.frames_per_chunk.
    num_frames: int = attrs.field(default=16, validator=in_range(1, MAX_FRAMES))
    steps: int = attrs.field(default=1000, validator=in_range(1, MAX_STEPS))  # optimizer steps
    # Wall-clock budget: stop (save, evaluate, export) at the next log step.
    max_seconds: float | None = attrs.field(default=None, validator=optional(in_range(0.0, 1e9)))
    batch_size: int = attrs.field(default=1, validator=in_range(1, MAX_COUNT))  # samples per rank per micro-step
    grad_accum: int = attrs.field(default=1, validator=in_range(1, MAX_COUNT))  # micro-steps per optimizer step
    lr: float = attrs.field(default=1e-5, validator=in_range(0.0, 1.0))
    betas: tuple[float, ...] = (0.0, 0.999)  # LongLive 2.0's AdamW betas
    weight_decay: float = attrs.field(default=0.0, validator=in_range(0.0, 100.0))
    grad_clip: float = attrs.field(default=10.0, validator=in_range(0.0, 1e9))  # max grad norm; 0 = no clipping
    warmup_steps: int = attrs.field(default=0, validator=in_range(0, MAX_STEPS))  # linear LR warmup
    ema_decay: float = attrs.field(default=0.99, validator=in_range(0.0, 1.0))
    # Before this step the EMA copies the model.
    ema_start: int = attrs.field(default=0, validator=in_range(0, MAX_STEPS))
    timestep_shift: float = attrs.field(default=5.0, validator=in_range(0.01, 100.0))
    time_weighting: str = attrs.field(default="gaussian", validator=one_of(TIME_WEIGHTINGS))
    # Corrupt samples skipped (each replaced by the next readable one) before the run stops.
    max_bad_samples: int = attrs.field(default=10, validator=in_range(0, MAX_COUNT))
    cache_latents: bool = False  # keep encoded latents and text in memory (small datasets)
    caption_dropout: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))  # P(empty prompt), for CFG
    # Loss weight of chunks that start a caption (chunk 0, cuts, prompt switches); 1 = plain mean.
    caption_start_weight: float = attrs.field(default=1.0, validator=in_range(0.0, 100.0))
    log_every: int = attrs.field(default=10, validator=in_range(1, MAX_STEPS))
    save_every: int = attrs.field(default=500, validator=in_range(0, MAX_STEPS))  # 0: only the final checkpoint
    keep_previous: bool = True  # keep the checkpoint before `last` as `previous`
    eval_every: int = attrs.field(default=0, validator=in_range(0, MAX_STEPS))  # 0: no evaluation
    # Latent frames of the evaluation video (default: num_frames).
    eval_frames: int | None = attrs.field(default=None, validator=optional(in_range(1, MAX_FRAMES)))
    init_from: str | None = None  # initial DiT weights (any format model.checkpoint_format reads)
    # LoRA (LongLive 2.0: r128 / alpha128): 0 trains every weight; > 0 freezes the base (quantized
    # first when [quant] names a format) and trains adapters only; checkpoints and export hold them only.
    lora_rank: int = attrs.field(default=0, validator=in_range(0, 4096))
    lora_alpha: float | None = attrs.field(default=None, validator=optional(in_range(1e-6, 1e6)))  # None: lora_rank
    # Activation checkpointing: keep only each DiT block's input, recompute the block in the backward
    # (long clips: a 16-s 5B sample holds 2 x 84,480 tokens; WanDiT.checkpoint_blocks).
    checkpoint_blocks: bool = False
    # I2V teacher forcing: the probability that a sample is image-conditioned; its latent frame 0
    # (the video's first frame, encoded alone) is given clean at t = 0 and carries no loss. 0: T2V only.
    i2v_probability: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
    # a shot longer than this many chunks gets a virtual cut every that many chunks (LongLive's
    # max_chunks_per_shot); 0: only the data's own cuts ("cut_frames")
    max_chunks_per_shot: int = attrs.field(default=0, validator=in_range(0, 1_000_000))
    error_recycling: ErrorRecyclingConfig = attrs.field(factory=ErrorRecyclingConfig)
    # How the processes of a torchrun launch hold the trained DiT (docs/parallel.md, "FSDP2"): "ddp"
    # replicates weights, gradients and AdamW state on every rank (small models); "fsdp2" shards them
    # (torch fully_shard, longlive/train/sharding.py). One process: nothing is wrapped either way.
    data_parallel: str = attrs.field(default="ddp", validator=one_of(DATA_PARALLEL))
    # fsdp2: the dtype parameters are all-gathered and computed in (gradients are reduced in fp32, the
    # sharded master weights stay fp32); "auto": bf16 on CUDA when run.dtype is bf16, else fp32.
    fsdp_param_dtype: str = attrs.field(default="auto", validator=one_of(FSDP_PARAM_DTYPES))
    # fsdp2: "world" shards over every process (dp x sp); "dp" shards over the dp ranks and replicates
    # over each SP group (HSDP). Equal when parallel.sp = 1.
    fsdp_shard: str = attrs.field(default="world", validator=one_of(FSDP_SHARDS))
    # EMA weights written to the run directory at the end (a file name, not a path).
    export: str = attrs.field(default="model.safetensors", validator=file_name())

    def __attrs_post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas: {list(self.betas)} must be two numbers in [0, 1), e.g. [0.0, 0.999]")
        if not self.export.endswith(".safetensors"):
            raise ConfigError(f"train.export: {self.export!r} must be a .safetensors file name")
        if self.data_parallel != "fsdp2":
            for key, default in (("fsdp_param_dtype", "auto"), ("fsdp_shard", "world")):
                if getattr(self, key) != default:
                    raise ConfigError(f"train.{key}: {getattr(self, key)!r} applies to train.data_parallel = "
                                      f"\"fsdp2\" only (it is {self.data_parallel!r}); set data_parallel = "
                                      f"\"fsdp2\" or remove {key}")

    def check(self, frames_per_chunk: int) -> None:
        """Cross-table checks against [sampler] (before anything is built)."""
        for key in ("num_frames", "eval_frames"):
            value = getattr(self, key)
            if value is not None and value % frames_per_chunk:
                near = max(1, round(value / frames_per_chunk)) * frames_per_chunk
                raise ConfigError(f"train.{key}: {value} is not a multiple of sampler.frames_per_chunk = "
                                  f"{frames_per_chunk}; try {near}")


def train_config(run: RunContext | CheckedExperiment) -> TrainConfig:
    """The run's TrainConfig: `run.task_config` once the trainer set it, else structured from [train]."""
    if isinstance(run.task_config, TrainConfig):
        return run.task_config
    table = run.experiment.train
    if table is None:
        raise ConfigError("train: missing table [train]; training needs at least data = \"shards pattern\"")
    return structure(table, TrainConfig, where="train")


def resolve_path(value: str, run: RunContext, key: str) -> str:
    """A path or shard pattern from [train] (`key`: its dotted name), by Experiment.path's rule."""
    return str(run.experiment.path(value, key))
