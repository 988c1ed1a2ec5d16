"""The `generate` task: build the parts named by the experiment, run the chunk loop, write outputs.

Inputs are checked before any weights load (prompt script, image size, frame counts, preset).
Outputs, in the run directory: `video.mp4` (`video_<i>.mp4` for batch > 1), optionally
`latents.safetensors`, TensorBoard scalars and a frame-strip preview.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import attrs
import torch

from longlive.cache import CacheSpec, KVCache
from longlive.geometry import Geometry
from longlive.monitor import progress
from longlive.pipeline import ChunkLoop, GenerationState, chunk_noise
from longlive.prompts import ChunkPrompt, chunk_prompts, load_prompt_script, single_prompt
from longlive.tasks import dit_preset, seeded_init

log = logging.getLogger(__name__)


def geometry_for(run: Any, codec: Any, preset: Any) -> Geometry:
    s = run.experiment.sampler
    return Geometry(height=s.height, width=s.width, temporal_stride=codec.temporal_stride,
                    spatial_stride=codec.spatial_stride, patch_h=preset.patch[1], patch_w=preset.patch[2],
                    frames_per_chunk=s.frames_per_chunk)


def build_model(run: Any, role: str = "generator", *, training: bool = False,
                checkpoint: str | None = None) -> torch.nn.Module:
    """The DiT named by model.preset with its weights, then adapters and quantization.

    The order is explicit: for inference adapters are merged first, then the model is quantized;
    for training the frozen base is quantized first, then adapters are attached. `checkpoint`
    overrides model.checkpoint (training starts from train.init_from). All parameters come back
    frozen; an adapter plugin unfreezes what it adds.
    """
    from longlive.model.convert import load_dit_weights
    from longlive.model.dit import WanDiT

    preset = dit_preset(run)
    cfg = run.experiment.model
    with torch.device("meta"):
        model = WanDiT(preset, attention=cfg.attention)
    checkpoint = checkpoint or cfg.checkpoint
    if checkpoint is not None:
        model = model.to_empty(device="cpu")
        load_dit_weights(model, checkpoint, format=cfg.checkpoint_format)
        model = model.to(device=run.device, dtype=run.dtype)
    elif training:  # training from scratch: Wan's initialisation (zero head), seeded by run.seed
        model = model.to_empty(device=run.device)
        with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
            torch.manual_seed(run.experiment.run.seed)
            model.init_weights()
        model = model.to(dtype=run.dtype)
    else:  # random weights drawn where they live: no 20 GB detour through host memory for the 5B
        log.warning("model.checkpoint is not set: the DiT has random weights")
        model = model.to(dtype=run.dtype).to_empty(device=run.device)
        seeded_init(model, run.experiment.run.seed)
    model = model.eval().requires_grad_(False)
    if training:
        run.hook.longlive_quantize_model(model=model, role=role, training=training, run=run)
        run.hook.longlive_load_adapters(model=model, role=role, training=training, run=run)
    else:
        run.hook.longlive_load_adapters(model=model, role=role, training=training, run=run)
        run.hook.longlive_quantize_model(model=model, role=role, training=training, run=run)
    if cfg.compile:
        model.compile_blocks()
    log.info("DiT %s: %.2f M parameters, %s on %s, attention %s", preset.name,
             sum(p.numel() for p in model.parameters()) / 1e6, run.dtype, run.device, model.attention_backend)
    return model


def build_cache(run: Any, preset: Any, geometry: Geometry, batch: int) -> KVCache:
    s = run.experiment.sampler
    cfg_batch = batch * (2 if s.guidance != 1.0 else 1)  # the CFG cache exists only when guidance is on
    spec = CacheSpec.for_model(preset, geometry, window_frames=s.window_frames, batch=cfg_batch,
                               dtype=run.dtype, device=run.device)
    storage = run.hook.longlive_make_kv_storage(spec=spec, run=run)
    policy = run.hook.longlive_make_kv_policy(spec=spec, run=run)
    cache = KVCache(spec, storage, policy)
    log.info("KV cache: %d slots x %d tokens x %d layers, %.2f GiB (%s, %s)", spec.num_slots, spec.chunk_tokens,
             spec.num_layers, cache.nbytes / 2**30, type(storage).__name__, type(policy).__name__)
    return cache


@attrs.frozen
class Parts:
    """What generation needs besides the prompts, built once per run."""

    model: torch.nn.Module
    codec: Any
    text: Any  # the text encoder
    sampler: Any
    geometry: Geometry
    latent_channels: int


def build_parts(run: Any, model: torch.nn.Module | None = None) -> Parts:
    """Codec, text encoder, sampler and (unless given) the DiT named by the experiment."""
    exp, s = run.experiment, run.experiment.sampler
    preset = dit_preset(run)
    codec_spec = run.components.get("codec", exp.model.codec, where="model.codec").value
    text = run.components.get("text_encoder", exp.model.text_encoder, where="model.text_encoder").value(run)
    sampler = run.components.get("sampler", s.name, where="sampler.name").value(s)
    codec = codec_spec.build(run)
    return Parts(model=model if model is not None else build_model(run), codec=codec, text=text, sampler=sampler,
                 geometry=geometry_for(run, codec_spec, preset), latent_channels=codec_spec.latent_channels)


def new_state(run: Any, model: torch.nn.Module, sampler: Any, text: Any, geometry: Geometry, batch: int,
              image_latent: torch.Tensor | None = None) -> GenerationState:
    """A fresh GenerationState (new KV cache from the hooks) with the experiment's guidance settings."""
    s = run.experiment.sampler
    return GenerationState(model=model, cache=build_cache(run, model.config, geometry, batch), sampler=sampler,
                           encode_text=text.encode, batch=batch, guidance=s.guidance,
                           negative_prompt=s.negative_prompt, image_latent=image_latent)


def render(run: Any, parts: Parts, schedule: list[ChunkPrompt], *, batch: int = 1,
           image_latent: torch.Tensor | None = None,
           show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[ChunkPrompt]]:
    """Generate the chunks of `schedule` with a fresh cache.

    Returns (video [B, 3, T, H, W] in [-1, 1], latents [B, C, F, h, w], the prompts actually used
    per chunk: a live prompt source may have replaced scheduled ones).
    """
    s = run.experiment.sampler
    state = new_state(run, parts.model, parts.sampler, parts.text, parts.geometry, batch, image_latent)
    decoder = run.hook.longlive_make_decoder(codec=parts.codec, run=run)
    loop = ChunkLoop(state, run.hook, run)
    shape = parts.geometry.latent_shape(s.frames_per_chunk, parts.latent_channels, batch)  # [B, C, f, h, w]
    chunks = progress(schedule, desc="chunks", unit="chunk") if show_progress else schedule
    latents, used = [], []
    with torch.inference_mode():
        for chunk in chunks:
            x0 = loop.step(chunk, chunk_noise(shape, chunk.index, run.experiment.run.seed, run.device, run.dtype))
            decoder.push(chunk.index, x0)
            latents.append(x0)
            used.append(attrs.evolve(chunk, prompt=state.prompt))
        return decoder.finish(), torch.cat(latents, dim=2), used


def generate_video(run: Any) -> dict:
    """The generate task: inputs are checked before any weights load."""
    exp = run.experiment
    s, g = exp.sampler, exp.generate
    preset = dit_preset(run)
    codec_spec = run.components.get("codec", exp.model.codec, where="model.codec").value
    geometry = geometry_for(run, codec_spec, preset)
    geometry.chunks(s.num_frames)
    script = load_prompt_script(g.prompt_script) if g.prompt_script else single_prompt(g.prompt, s.num_frames)
    schedule = chunk_prompts(script, num_frames=s.num_frames, frames_per_chunk=s.frames_per_chunk,
                             where="generate.prompt_script" if g.prompt_script else "generate.prompt")
    image = _read_image(g.image, s) if g.image else None
    parts = build_parts(run)
    image_latent = None
    if image is not None:  # I2V: the image becomes latent frame 0 (a 1-frame encode)
        image_latent = parts.codec.encode(image[None, :, None].expand(g.batch, -1, -1, -1, -1).to(run.device, run.dtype))
    started = time.perf_counter()
    video, latents, used = render(run, parts, schedule, batch=g.batch, image_latent=image_latent)
    return _write_outputs(run, video, latents, used, time.perf_counter() - started, geometry)


def _read_image(path: str, s: Any) -> torch.Tensor:
    from longlive.media import read_image

    return read_image(path, height=s.height, width=s.width)


def _write_outputs(run: Any, video: torch.Tensor, latents: torch.Tensor, schedule: list, elapsed: float,
                   geometry: Geometry) -> dict:
    from longlive.media import to_uint8_frames, write_mp4
    from longlive.model.checkpoint import save_safetensors_atomic

    g = run.experiment.generate
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
    run.monitor.text("generate/prompts", "\n".join(f"chunk {c.index}: {c.prompt}" for c in schedule))
    return {"frames": frames, "latent_frames": latents.shape[2], "seconds": elapsed, "fps": fps, "files": files,
            "video": video, "schedule": schedule,
            "summary": f"generated {frames} frames ({frames / g.fps:.1f} s of video) in {elapsed:.1f} s"}
