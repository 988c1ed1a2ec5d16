"""Assembly: build the parts of a run from its experiment and plugin manager.

Every task (generate, bench, train, evaluation, the toy tasks, the benchmark scripts) gets its
networks, codec, text encoder, sampler, KV cache, chunk loop and decoder from here, so a hook
that changes one part (a KV storage, a quantization format, a decoder) changes it for all.

The model is built in fixed phases, each a function below, in this order:

    construct_on_meta        the DiT named by model.preset, no memory allocated
    convert_for_checkpoint   `longlive_convert_model`: modules a checkpoint needs (packed layers)
    place_and_load           allocate on the target device in the target dtype, then copy the
                             checkpoint in one tensor at a time (or draw random / initial weights)
    adapt_and_quantize       inference: `longlive_load_adapters` (merge LoRA), then
                             `longlive_quantize_model`; training: quantize the frozen base, then
                             attach BF16 adapters
    parallelize              `longlive_parallelize_model` (sequence parallelism, FSDP)
    compile                  torch.compile of the blocks (model.compile)

The model declares which of its modules stay in high precision (`WanDiT.KEEP_HIGH_PRECISION`);
quantization formats read that list.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import attrs
import torch

from longlive.cache import CacheSpec, KVCache
from longlive.geometry import Geometry
from longlive.model.dit import WanDiT
from longlive.model.init import seeded_init
from longlive.monitor import progress
from longlive.pipeline import ChunkLoop, GenerationState, chunk_noise
from longlive.quant.format import cast_model, forward_context

if TYPE_CHECKING:
    from longlive.prompts import ChunkPrompt
    from longlive.protocols import Codec, Decoder, TextEncoder
    from longlive.run import RunContext
    from longlive.sampling import Sampler

log = logging.getLogger(__name__)

ROLES = ("generator", "teacher", "critic")


# ---- the model, in phases ----------------------------------------------------------------


def build_model(run: RunContext, role: str = "generator", *, training: bool = False,
                checkpoint: str | None = None, where: str = "model.checkpoint",
                dtype: torch.dtype | None = None) -> WanDiT:
    """The DiT of `role` through every build phase (module docstring). All parameters come back
    frozen; an adapter plugin unfreezes what it adds. `checkpoint` overrides model.checkpoint
    (training starts from train.init_from; `where` names the key in errors); `dtype` overrides
    run.dtype (training keeps FP32 masters)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    checkpoint = checkpoint or run.experiment.model.checkpoint
    dtype = dtype or run.dtype
    model = construct_on_meta(run)
    convert_for_checkpoint(run, model, role, checkpoint, training=training, where=where)
    place_and_load(run, model, checkpoint, device=run.device, dtype=dtype, training=training, where=where)
    model.eval().requires_grad_(False)
    adapt_and_quantize(run, model, role, training=training)
    parallelize(run, model, role)
    if run.experiment.model.compile:
        mode = run.experiment.model.compile_mode
        model.compile_blocks(**({} if mode == "default" else {"mode": mode}))
    log.info("DiT %s (%s): %.2f M parameters, %s on %s, attention %s", model.config.name, role,
             sum(p.numel() for p in model.parameters()) / 1e6, dtype, run.device, model.attention_backend)
    return model


def construct_on_meta(run: RunContext) -> WanDiT:
    with torch.device("meta"):
        return WanDiT(run.preset, attention=run.experiment.model.attention)


def convert_for_checkpoint(run: RunContext, model: WanDiT, role: str, checkpoint: str | None, *,
                           training: bool = False, where: str = "model.checkpoint") -> None:
    """Replace the modules whose weights a checkpoint stores in a layout of its own (packed linears:
    the core's implementation, longlive/quant/packed.py; plugins may add others)."""
    if checkpoint is not None:
        run.hook.longlive_convert_model(model=model, role=role, checkpoint=checkpoint, training=training,
                                        where=where, run=run)


def place_and_load(run: RunContext, model: WanDiT, checkpoint: str | None, *, device: torch.device,
                   dtype: torch.dtype, training: bool, where: str = "model.checkpoint") -> None:
    """Allocate the meta model on `device` in `dtype` and fill it: checkpoint, Wan init or random."""
    from longlive.model.convert import load_dit_weights

    cast_model(model, dtype)  # on meta: no memory; packed tensors of converted modules keep their dtypes
    model.to_empty(device=device)
    if checkpoint is not None:
        load_dit_weights(model, checkpoint, format=run.experiment.model.checkpoint_format, where=where)
    elif training:  # training from scratch: Wan's initialisation (zero head), seeded by run.seed
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(run.experiment.run.seed)
            model.init_weights()
    else:  # random weights drawn where they live: no detour through host memory for the 5B
        log.warning("model.checkpoint is not set: the DiT has random weights")
        seeded_init(model, run.experiment.run.seed)


def adapt_and_quantize(run: RunContext, model: WanDiT, role: str, *, training: bool) -> None:
    """Adapters and quantization in the documented order (module docstring)."""
    if training:
        run.hook.longlive_quantize_model(model=model, role=role, training=True, run=run)
        run.hook.longlive_load_adapters(model=model, role=role, training=True, run=run)
    else:
        run.hook.longlive_load_adapters(model=model, role=role, training=False, run=run)
        run.hook.longlive_quantize_model(model=model, role=role, training=False, run=run)


def parallelize(run: RunContext, model: WanDiT, role: str) -> None:
    run.hook.longlive_parallelize_model(model=model, role=role, run=run)


# ---- codec, text, sampler ----------------------------------------------------------------


def build_codec(run: RunContext) -> Codec:
    return run.codec_spec.build(run)


def build_text_encoder(run: RunContext) -> TextEncoder:
    return run.components.get("text_encoder", run.experiment.model.text_encoder, where="model.text_encoder").value(run)


def build_sampler(run: RunContext) -> Sampler:
    s = run.experiment.sampler
    return run.components.get("sampler", s.name, where="sampler.name").value(s)


@attrs.frozen
class Parts:
    """What generation needs besides the prompts, built once per run."""

    model: WanDiT
    codec: Codec
    text: TextEncoder
    sampler: Sampler
    geometry: Geometry
    latent_channels: int


def build_parts(run: RunContext, model: WanDiT | None = None) -> Parts:
    """Codec, text encoder, sampler and (unless given) the generator DiT named by the experiment."""
    text, sampler, codec = build_text_encoder(run), build_sampler(run), build_codec(run)
    return Parts(model=model if model is not None else build_model(run), codec=codec, text=text, sampler=sampler,
                 geometry=run.geometry, latent_channels=run.codec_spec.latent_channels)


# ---- cache, loop, decoder ----------------------------------------------------------------


def build_cache(run: RunContext, model: WanDiT, geometry: Geometry, batch: int,
                guidance: float | None = None) -> KVCache:
    """A KV cache for `batch` videos (doubled under CFG) from the storage and policy hooks, in the
    run's sequence layout (which sets the heads each rank holds)."""
    s = run.experiment.sampler
    guidance = s.guidance if guidance is None else guidance
    cfg_batch = batch * (2 if guidance != 1.0 else 1)  # the CFG cache exists only when guidance is on
    spec = CacheSpec.for_model(model.config, geometry, window_frames=s.window_frames, batch=cfg_batch,
                               dtype=run.dtype, device=run.device, layout=run.layout)
    storage = run.hook.longlive_make_kv_storage(spec=spec, run=run)
    policy = run.hook.longlive_make_kv_policy(spec=spec, run=run)
    cache = KVCache(spec, storage, policy)
    log.info("KV cache: %d slots x %d tokens x %d layers x %d heads, %.2f GiB (%s, %s, layout %s)", spec.num_slots,
             spec.chunk_tokens, spec.num_layers, spec.num_heads, cache.nbytes / 2**30, type(storage).__name__,
             type(policy).__name__, spec.layout.name)
    return cache


def new_chunk_loop(run: RunContext, *, model: WanDiT, sampler: Sampler, text: TextEncoder, geometry: Geometry,
                   batch: int = 1, image_latent: torch.Tensor | None = None,
                   guidance: float | None = None) -> ChunkLoop:
    """A chunk loop over a fresh GenerationState (new KV cache) with the experiment's guidance
    (or `guidance`: a training rollout runs the student at 1)."""
    s = run.experiment.sampler
    guidance = s.guidance if guidance is None else guidance
    state = GenerationState(model=model, cache=build_cache(run, model, geometry, batch, guidance=guidance),
                            sampler=sampler, encode_text=text.encode, batch=batch, guidance=guidance,
                            negative_prompt=s.negative_prompt, image_latent=image_latent)
    return ChunkLoop(state, run.hook, run)


def make_decoder(run: RunContext, codec: Codec) -> Decoder:
    """The decoder role's answer for `codec` (on the run's device, where the latents are made)."""
    return run.hook.longlive_make_decoder(codec=codec, device=run.device, run=run)


@attrs.frozen
class Rendered:
    chunks: list[ChunkPrompt]  # the prompts actually used (a live source may have replaced some)
    frames: int  # decoded pixel frames per video
    video: torch.Tensor | None = None  # [B, 3, T, H, W] in [-1, 1] on the CPU, only with keep_video
    latents: torch.Tensor | None = None  # [B, C, F, h, w], only with keep_latents


def render(run: RunContext, parts: Parts, schedule: list[ChunkPrompt], *, batch: int = 1,
           image_latent: torch.Tensor | None = None, show_progress: bool = True,
           on_frames: Callable[[torch.Tensor], None] | None = None,
           on_latents: Callable[[torch.Tensor], None] | None = None,
           keep_video: bool = False, keep_latents: bool = False) -> Rendered:
    """Generate the chunks of `schedule` with a fresh cache and decoder.

    Decoded frames stream out as they are ready: `on_frames(frames)` gets each piece
    [B, 3, t, H, W] (CPU, in [-1, 1]) in order, `on_latents(latents)` each chunk's latents. Nothing
    is kept unless asked: `keep_video` / `keep_latents` for callers that need the whole video in
    memory (evaluation, short clips). The decoder is closed however the loop ends. Under sequence
    parallelism every rank of the launch runs the loop, but only the writer rank (`run.mesh`)
    decodes and delivers frames: the others' latents are the same.
    """
    s = run.experiment.sampler
    loop = new_chunk_loop(run, model=parts.model, sampler=parts.sampler, text=parts.text, geometry=parts.geometry,
                          batch=batch, image_latent=image_latent)
    shape = parts.geometry.latent_shape(s.frames_per_chunk, parts.latent_channels, batch)  # [B, C, f, h, w]
    chunks = progress(schedule, desc="chunks", unit="chunk") if show_progress else schedule
    video, latents, used, frames = [], [], [], 0

    def deliver(pieces: list[torch.Tensor]) -> None:
        nonlocal frames
        for piece in pieces:  # [B, 3, t, H, W]
            frames += piece.shape[2]
            if on_frames is not None:
                on_frames(piece)
            if keep_video:
                video.append(piece)

    decoder = make_decoder(run, parts.codec) if run.mesh.is_writer else None
    try:
        with torch.inference_mode(), forward_context(parts.model):  # a quantization format's context, if any
            for chunk in chunks:
                noise = chunk_noise(shape, chunk.index, run.experiment.run.seed, run.device, run.dtype)
                x0 = loop.step(chunk, noise)
                used.append(loop.used_prompt(chunk))
                if on_latents is not None:  # before the decode: a failing decode still leaves the latents
                    on_latents(x0)
                if keep_latents:
                    latents.append(x0)
                if decoder is not None:
                    decoder.push(chunk.index, x0)
                    deliver(decoder.ready())
            if decoder is not None:
                deliver(decoder.flush())
    finally:
        if decoder is not None:
            decoder.close()
    return Rendered(used, frames, video=torch.cat(video, dim=2) if keep_video and video else None,
                    latents=torch.cat(latents, dim=2) if keep_latents else None)
