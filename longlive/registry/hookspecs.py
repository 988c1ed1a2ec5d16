"""The hook points of LongLive: the API reference for plugin authors.

A plugin is a class with a frozen attrs `Config` class attribute (validating its
`[plugins.<name>]` table) and methods decorated with `@hookimpl` whose names are listed here.
The core calls every hook by keyword; an implementation may accept any subset of the arguments.

Hooks are grouped by phase. Each says when it is called, its parameters, what it returns and
what it may raise. Errors: raise `ConfigError` (one line naming the key and the fix; exit
code 2) for bad settings, `PluginError` for a plugin that cannot work, anything else for a bug.

Roles. A `firstresult` hook stops at the first non-None result, so it defines a role that only
one enabled plugin may fill: the core registers its default for it with `trylast=True`, and the
manager refuses two enabled plugins that both implement it, naming both (`ROLES` is derived
from the `firstresult` markers below, never written by hand).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from longlive.registry import hookspec

if TYPE_CHECKING:
    import torch

    from longlive.cache import CachePolicy, CacheSpec, KVStorage
    from longlive.components import ScopedRegistry
    from longlive.config import Experiment, ParallelConfig
    from longlive.layout import SequenceLayout
    from longlive.model.dit import WanDiT
    from longlive.parallel import ParallelMesh
    from longlive.pipeline import GenerationState
    from longlive.prompts import ChunkPrompt, NewShot
    from longlive.protocols import Codec, Decoder, Objective
    from longlive.run import RunContext
    from longlive.train.algorithm import TrainingAlgorithm, TrainingContext


# ---- Setup: once per run, before anything is built ---------------------------------------


@hookspec
def longlive_register_components(registry: ScopedRegistry) -> None:
    """Add named components: `registry.add(kind, name, value, summary=..., requires=...)`.

    When: once for every enabled plugin (and the core), when the plugin manager is built
    (also by `validate` and `plugins`: keep it cheap; pass a `Lazy("module:function")` as a
    factory so heavy modules load only when a task builds the component).
    Kinds and what `value` is:
    - "dit_preset": a `longlive.model.presets.DiTConfig`.
    - "codec": a `longlive.components.CodecSpec` (its `build(run) -> Codec`, protocols.py).
    - "text_encoder": a factory `(run) -> TextEncoder`.
    - "sampler": a factory `(sampler_config) -> Sampler` (longlive.sampling).
    - "task": a function `(run) -> dict` run by `longlive run` when `run.task` names it.
    - "dataset": a factory `(run, train_config) -> dataset` (longlive/train/data.py).
    - "metric": a callable `(video, schedule, fps) -> dict` (longlive/train/evaluate.py).
    - "quant_format": a `longlive.quant.format.QuantFormat` object (probe, convert, packed state,
      cast, forward context, refresh); `[quant]` picks one per model role.
    `requires`: {import name: what to pip install} for optional packages; validation checks them.
    Raises: PluginError when a name is already taken (the message names both plugins).
    """


@hookspec
def longlive_configure(experiment: Experiment, plugin_configs: dict[str, Any]) -> None:
    """Check the whole experiment once it is structured.

    When: for every plugin after all plugin configs are built, before anything heavy (also by
    `validate`). `plugin_configs` maps plugin name to its Config. Use it for cross-table checks,
    e.g. a sink larger than the window. Raises: ConfigError naming the key and the fix.
    """


@hookspec
def longlive_check_compat(run: RunContext) -> None:
    """Check that this machine can run the plugin (device, libraries, GPU generation).

    When: once the device is known, before any weights load (`run.device` is set). A plugin that
    cannot run here says so in one clear error; nothing falls back silently.
    Raises: ConfigError naming what is missing and the setting to change.
    """


# ---- Parallelism: once per run, after the device is resolved -----------------------------


@hookspec(firstresult=True)
def longlive_make_device_mesh(parallel: ParallelConfig, device: torch.device, run: RunContext) -> tuple | None:
    """Role: the device mesh. Return `(ParallelMesh, device)`: this process's place in the
    (dp, sp) grid of the launch (longlive/parallel.py) and the device it computes on.

    When: once per run, in `make_run`, for every task, before any model is built. `parallel`
    is the experiment's [parallel] table (`sp`); `device` the resolved run.device. The core's
    default (`longlive.distributed.build_mesh`) reads torchrun's environment, joins the process
    group (gloo on CPU, NCCL on CUDA, one process per device: cuda:LOCAL_RANK) and builds
    torch's DeviceMesh ("dp", "sp") with dp = WORLD_SIZE / sp; a single process without torchrun.
    Raises: ConfigError when sp does not divide the number of processes.
    """


@hookspec(firstresult=True)
def longlive_make_sequence_layout(mesh: ParallelMesh, run: RunContext) -> SequenceLayout | None:
    """Role: the sequence layout (`SequenceLayout`, longlive/layout.py): how a chunk's tokens
    are split over the `mesh.sp` ranks of an SP group and which collectives run around
    self-attention in the DiT's cached forward.

    When: once per run, in `make_run`, right after the device mesh. Return None to leave the
    role to the next implementation (e.g. when `mesh.sp` is 1). The core's default: the
    single-device layout when `mesh.sp` is 1; for sp > 1 it raises ConfigError naming the plugin
    to enable (sp_balanced), since the core does not split sequences itself.
    """


# ---- Model: once per network role, in the order of longlive/assembly.py -------------------


@hookspec
def longlive_convert_model(model: WanDiT, role: str, checkpoint: str, training: bool, where: str,
                           run: RunContext) -> None:
    """Replace modules whose weights `checkpoint` stores in a layout of its own (packed NVFP4).

    When: the model is still on the meta device, before its weights load; only when a checkpoint
    is given. `role`: "generator" | "teacher" | "critic"; `training`: whether the model will be
    trained; `where`: the config key of the checkpoint, for errors. Modify `model` in place
    (module replacement, never rebinding methods). The core implements it for packed linears
    (longlive/quant/packed.py: any format's packed layout). Raises: ConfigError when the
    checkpoint's layout does not fit the experiment's quantization settings.
    """


@hookspec
def longlive_load_adapters(model: WanDiT, role: str, training: bool, run: RunContext) -> None:
    """Attach or merge adapters (LoRA) into `model` of `role` in place.

    When: after the weights load. Inference (`training` False): adapters are merged first, then
    the model is quantized. Training: the frozen base is quantized first, then BF16 adapters are
    attached (and set trainable). Raises: ConfigError for adapter weights that do not fit.
    """


@hookspec
def longlive_quantize_model(model: WanDiT, role: str, training: bool, run: RunContext) -> Any:
    """Replace eligible linears of `model` of `role` by quantized ones, in place.

    When: after the weights load; `training` selects the order (see longlive_load_adapters).
    The core implements it: it applies the `quant_format` component `[quant]` names for `role`
    (longlive/quant/apply.py), leaves `model.KEEP_HIGH_PRECISION` and `quant.skip` alone, and
    records what ran in `run.quant[role]`; a format plugin only registers its format. Returns
    the core's QuantReport (results are collected, not first-wins). Raises: ConfigError for a
    format that cannot run here in `real` mode, or a dimension the format's blocks do not divide.
    """


@hookspec
def longlive_parallelize_model(model: WanDiT, role: str, run: RunContext) -> None:
    """Distribute `model` of `role` over the run's device mesh (sequence parallelism, FSDP), in place.

    When: after adapters and quantization, before compilation. `run.mesh` is the device mesh
    and `run.layout` the sequence layout; a plugin checks here that the model fits them
    (heads divisible by sp) and wraps or shards it (FSDP) when it trains.
    """


# ---- KV cache: once per generation ------------------------------------------------------


@hookspec(firstresult=True)
def longlive_make_kv_storage(spec: CacheSpec, run: RunContext) -> KVStorage | None:
    """Role: the KV-cache storage. Return the object that holds cached K/V (`KVStorage`, cache.py).

    When: a new KV cache is built (each generated video, each evaluation). `spec` gives layers,
    batch (doubled under CFG), heads, head_dim, tokens per chunk slot, number of slots, dtype
    and device. The core's default: BF16Storage.
    """


@hookspec(firstresult=True)
def longlive_make_kv_policy(spec: CacheSpec, run: RunContext) -> CachePolicy | None:
    """Role: the KV-cache visibility policy (`CachePolicy`, cache.py): which chunk slots a query
    sees, where a chunk is written, its RoPE position.

    When: with longlive_make_kv_storage, with the same `spec`. The core's default: SlidingWindowPolicy.
    """


# ---- Generation: per chunk ----------------------------------------------------------------


@hookspec(firstresult=True)
def longlive_make_decoder(codec: Codec, device: torch.device, run: RunContext) -> Decoder | None:
    """Role: the latent decoder (`Decoder`, protocols.py) of `codec`, whose weights and the
    chunks' latents are on `device`: `push(index, latents)` per chunk in order, `ready()` and
    `flush()` return decoded frames in order (CPU), `close()` (always called, also after an error).

    When: before each generated video (generation, held-out and training evaluation). An async
    decoder works on another thread, stream or device with a bounded queue, and re-raises a
    worker's error at the main thread's next call. The core's default: SyncDecoder.
    """


@hookspec(firstresult=True)
def longlive_next_prompt(chunk: ChunkPrompt, state: GenerationState, run: RunContext) -> str | NewShot | None:
    """Role: the live prompt source. Return a prompt that replaces the scheduled `chunk.prompt`.

    When: before every chunk; `state` is the GenerationState (`state.prompt`: the prompt in
    force). None keeps the scheduled prompt. When the answer differs from the prompt in force
    (inside a shot), the core emits `longlive_prompt_switch` for this chunk. A `NewShot(prompt)`
    answer (longlive/prompts.py) is a cut instead: the chunk starts a new shot
    (`longlive_shot_start`, with the shot index one past the one in force). Never block: poll
    and return.
    """


@hookspec(firstresult=True)
def longlive_prompt_prefix(chunk: ChunkPrompt, state: GenerationState | None, run: RunContext) -> str | None:
    """Role: the conditioning prefix. Return text put before the chunk's prompt for the text encoder.

    When: before every chunk, after the prompt is settled (`state.prompt`). LongLive's convention puts its scene-
    cut prefix on the first chunk of each later shot only. The prefix is not part of the prompt:
    switch detection, logs and the saved schedule see the prompt without it. None: no prefix.
    Training data asks too, for every chunk of a sample (longlive/train/data.py), with `state`
    None: the training text then matches what generation conditions on.
    """


@hookspec
def longlive_shot_start(shot_index: int, chunk_index: int, state: GenerationState, run: RunContext) -> None:
    """Shot number `shot_index` starts at `chunk_index` (a structured event from the prompt script).

    When: before the chunk is denoised. Plugins may pin sinks, move RoPE offsets or clear the
    window through `state.cache`.
    """


@hookspec
def longlive_prompt_switch(chunk_index: int, prompt: str, state: GenerationState, run: RunContext) -> None:
    """The prompt changes inside a shot at `chunk_index`, to `prompt`; `state`: the GenerationState.

    When: before the chunk is denoised. A re-cache plugin re-runs the model over the recent
    window under the new prompt here.
    """


@hookspec
def longlive_chunk_done(index: int, latents: torch.Tensor, state: GenerationState, run: RunContext) -> None:
    """Chunk `index` is denoised and committed. `latents`: [B, C, F, H, W], read-only; `state`:
    the generation's GenerationState.

    When: after the commit, before the latents go to the decoder. Queue work and return at once:
    the next chunk is waiting.
    """


@hookspec
def longlive_frames_decoded(frames: torch.Tensor, first_frame: int, run: RunContext) -> None:
    """The generate task has written decoded frames to its video: `frames` [B, 3, t, H, W] float
    in [-1, 1] on the CPU, read-only; `first_frame` is the video frame index of `frames[:, :, 0]`.

    When: for every decoded piece, in order, right after the mp4 sink encoded it. The task keeps
    no video in memory: a plugin that needs frames later (a metric) keeps what it needs here, and
    host memory stays bounded only while every implementation keeps a bounded part.
    """


@hookspec
def longlive_run_end(run: RunContext, result: dict) -> None:
    """The task finished; `result` holds its summary numbers and may be extended in place.

    When: after the task, also when it raised (then `result` is empty). Flush queues and release
    resources here; do not raise for a task that already failed.
    """


# ---- Training ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def longlive_make_objective(run: RunContext) -> Objective | None:
    """Role: the training objective (`Objective`, protocols.py).

    When: once, when the trainer is built. The core's default: the flow-matching loss (teacher
    forcing or bidirectional) of longlive/train/objective.py.
    """


@hookspec(firstresult=True)
def longlive_make_training_algorithm(context: TrainingContext) -> TrainingAlgorithm | None:
    """Role: the training algorithm (`TrainingAlgorithm`, longlive/train/algorithm.py).

    When: once, when the trainer is built, after the data pipeline (`context` holds the run,
    [train], the ranks, dataset, stream, encoder, codec and text encoder). The algorithm builds
    and owns its networks (`longlive.assembly.build_model` per role), optimizers, losses and
    update schedule; the trainer runs it, checkpoints its `state_dict` and calls its `export`.
    The core's default: teacher forcing / bidirectional flow matching on one network
    (longlive/train/teacher_forcing.py). The dmd plugin provides DMD distillation.
    """


@hookspec
def longlive_optimizer_step_done(model: WanDiT, step: int, run: RunContext) -> None:
    """An optimizer step (1-based `step`) has updated `model`'s master weights.

    When: right after `optimizer.step()`, after the core has refreshed every quantized module
    (`longlive.quant.format.refresh_model`). A plugin that derives data from weights (quantized
    copies, statistics) rebuilds it here.
    """


# ---- Monitoring -------------------------------------------------------------------------


@hookspec
def longlive_log(step: int, scalars: dict[str, float], run: RunContext) -> None:
    """Record `scalars` (name -> value) at `step` (the core writes them to TensorBoard and the debug log).

    When: whenever a task logs (training every log_every steps, generation and bench at the end).
    """


def _roles() -> dict[str, str]:
    """firstresult hook name -> the role it fills (its docstring's "Role: <role>" words)."""
    out = {}
    for name, fn in list(globals().items()):
        opts = getattr(fn, "longlive_spec", None)
        if name.startswith("longlive_") and opts and opts.get("firstresult"):
            found = re.match(r"Role: ([^.(:]+)", (fn.__doc__ or "").strip())
            out[name] = found[1].strip() if found else name
    return out


ROLES: dict[str, str] = _roles()
