"""The hook points of LongLive: the API reference for plugin authors.

A plugin is a class with a frozen attrs `Config` class attribute (validating its
`[plugins.<name>]` table) and methods decorated with `@hookimpl` whose names are listed here.
The core calls every hook by keyword; an implementation may accept any subset of the arguments.
Hooks are grouped by phase. "First result wins" hooks stop at the first non-None result; the
core registers its defaults for them with `trylast=True`, and the manager refuses two enabled
plugins that both implement one of them (ROLE_HOOKS), so which plugin won is never a matter
of load order.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from longlive.registry import hookspec

if TYPE_CHECKING:
    import torch
    from torch import nn

    from longlive.cache import CachePolicy, CacheSpec, KVStorage
    from longlive.components import ComponentRegistry
    from longlive.config import Experiment
    from longlive.run import RunContext

# First-result hooks that define a role only one enabled plugin may fill.
ROLE_HOOKS = {
    "longlive_make_kv_storage": "the KV-cache storage",
    "longlive_make_kv_policy": "the KV-cache visibility policy",
    "longlive_make_decoder": "the latent decoder",
    "longlive_make_objective": "the training objective",
}


# ---- Setup: once per run, before anything is built ---------------------------------------


@hookspec
def longlive_register_components(registry: ComponentRegistry) -> None:
    """Add named components: `registry.add(kind, name, value, summary=...)`.

    Called for every enabled plugin (and the core) once, when the plugin manager is built.
    Kinds and what `value` is:
    - "dit_preset": a `longlive.model.presets.DiTConfig`.
    - "codec": a factory `(run) -> codec` (Wan VAE API: encode/decode/decode_stream/decode_chunk).
    - "text_encoder": a factory `(run) -> encoder` with `encode(prompts) -> [B, L, D]`.
    - "sampler": a factory `(sampler_config) -> sampler` (longlive.sampling API).
    - "task": a function `(run) -> dict` run by `longlive run` when `run.task` names it.
    - "quant_format": a `longlive.quant.format.QuantFormat` object (probe, convert, packed state,
      cast, forward context, refresh); `[quant]` picks one per model role.
    - "metric", "dataset": factories documented by the plugins that use them.
    A name already taken by another plugin is a PluginError naming both plugins.
    """


@hookspec
def longlive_configure(experiment: Experiment, plugin_configs: dict[str, Any]) -> None:
    """Check the whole experiment once it is structured; raise ConfigError on conflicts.

    Called for every plugin after all plugin configs are built and before anything heavy
    happens (also by `longlive validate`). `plugin_configs` maps plugin name to its Config.
    Use it for cross-table checks, e.g. a sink larger than the window.
    """


@hookspec
def longlive_check_compat(run: RunContext) -> None:
    """Check that this machine can run the plugin (device, libraries); raise ConfigError if not.

    Called once the device is known, before weights load. A plugin that cannot run here says
    so in one clear error; nothing falls back silently.
    """


# ---- Model: once per model role ----------------------------------------------------------


@hookspec
def longlive_load_adapters(model: nn.Module, role: str, training: bool, run: RunContext) -> None:
    """Attach or merge adapters (LoRA) into `model` in place. `role`: generator|teacher|critic.

    Order relative to `longlive_quantize_model` is fixed by the core and explicit: for
    inference (`training` false) adapters are merged first, then the model is quantized; for
    training the frozen base is quantized first, then BF16 adapters are attached. The core
    implements `[model] lora` (longlive/lora.py) and `train.lora_rank`.
    """


@hookspec
def longlive_quantize_model(model: nn.Module, role: str, training: bool, run: RunContext) -> Any:
    """Replace eligible modules of `model` by quantized ones, in place (see load_adapters).

    The core implements it: it applies the `quant_format` component `[quant]` names for `role`
    (longlive/quant/apply.py) and records what ran in `run.quant[role]`; a format plugin only
    registers its format. Returns the core's QuantReport (results are collected, not first-wins).
    """


# ---- KV cache: once per generation ------------------------------------------------------


@hookspec(firstresult=True)
def longlive_make_kv_storage(spec: CacheSpec, run: RunContext) -> KVStorage | None:
    """Return the storage that holds cached K/V (bf16 slots by default; NVFP4 in kv_fp4).

    First result wins; the core's bf16 storage is registered trylast. `spec` gives layers,
    batch, heads, head_dim, tokens per chunk slot and number of slots.
    """


@hookspec(firstresult=True)
def longlive_make_kv_policy(spec: CacheSpec, run: RunContext) -> CachePolicy | None:
    """Return the policy deciding which chunk slots a query sees and where a chunk is written.

    First result wins; the core's plain sliding window is registered trylast.
    """


# ---- Generation: per chunk ----------------------------------------------------------------


@hookspec(firstresult=True)
def longlive_make_decoder(codec: Any, run: RunContext) -> Any | None:
    """Return the object that turns latents into frames: `push(index, latents)`, `finish() -> video`.

    First result wins; the core's synchronous decoder is registered trylast. An async plugin
    decodes on another stream, device or thread with a bounded queue, and re-raises errors.
    """


@hookspec(firstresult=True)
def longlive_next_prompt(chunk: Any, state: Any, run: RunContext) -> str | None:
    """Return a prompt that replaces the scheduled `chunk.prompt` (a ChunkPrompt), or None.

    Called before every chunk. A live prompt source (a file or stdin polled while generating)
    answers here; when the answer differs from the prompt in force, the core emits
    `longlive_prompt_switch` for this chunk. First result wins.
    """


@hookspec
def longlive_shot_start(shot_index: int, chunk_index: int, state: Any, run: RunContext) -> None:
    """A new shot starts at `chunk_index` (a structured event from the prompt script).

    Called before the chunk is denoised. `state` is the pipeline's GenerationState: plugins may
    pin sinks, move RoPE offsets or clear the window through `state.cache`.
    """


@hookspec
def longlive_prompt_switch(chunk_index: int, prompt: str, state: Any, run: RunContext) -> None:
    """The prompt changes inside a shot at `chunk_index` (before the chunk is denoised).

    A re-cache plugin re-runs the model over the recent window under the new prompt here.
    """


@hookspec
def longlive_chunk_done(index: int, latents: torch.Tensor, state: Any, run: RunContext) -> None:
    """Chunk `index` is denoised and committed. `latents`: [B, C, F, H, W], read-only.

    Queue work and return at once: the next chunk is waiting.
    """


@hookspec
def longlive_run_end(run: RunContext, result: dict) -> None:
    """The task finished; `result` holds its summary numbers (may be extended in place).

    Flush queues and release resources here. Called also when the task raised (then
    `result` is empty).
    """


# ---- Training ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def longlive_make_objective(run: RunContext) -> Any | None:
    """Return the training objective `(model, batch, generator) -> (loss, metrics)`.

    `batch` holds "latents" [B, C, F, H, W], "context" [B, chunks, L, D] and "seeds" (one per
    sample; the objective re-seeds `generator` from them, so noise and timesteps do not depend on
    how a batch is split over ranks or accumulation steps). First result wins; the core's
    flow-matching loss (teacher forcing or bidirectional) is registered trylast.
    """


@hookspec
def longlive_optimizer_step_done(model: nn.Module, step: int, run: RunContext) -> None:
    """An optimizer step (1-based `step`) has updated `model`'s master weights.

    Called by the trainer right after `optimizer.step()`, after the core has refreshed every
    quantized module (`longlive.quant.format.refresh_model`). A plugin that derives data from
    weights (quantized copies, statistics) rebuilds it here.
    """


# ---- Monitoring -------------------------------------------------------------------------


@hookspec
def longlive_log(step: int, scalars: dict[str, float], run: RunContext) -> None:
    """Record scalar metrics at `step` (the core writes them to TensorBoard and the log)."""
