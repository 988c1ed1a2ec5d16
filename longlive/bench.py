"""The `bench` task: steady-state speed and memory of the generation loop (docs/benchmarks.md).

Metrics, precisely:
- denoise-loop FPS: pixel frames per chunk (frames_per_chunk x codec temporal stride) divided by
  the median wall time of one chunk, over `measure_chunks` chunks taken after `warmup_chunks`
  (which must fill the KV window). A chunk = `steps` denoising forwards + 1 clean context pass
  + the cache commit; CFG as configured; VAE and text encoder excluded (text embeddings are
  computed before timing). Times come from CUDA events around each chunk; the host never waits
  inside the loop.
- time split: CUDA kernel time of `profile_chunks` further chunks under torch.profiler, grouped
  into attention / GEMM / other by kernel name.
- peak GPU memory: torch.cuda.max_memory_allocated over model build + cache + the timed loop.
- VAE streaming-decode FPS: pixel frames / median time to decode one chunk of latents through
  the streaming decoder (state carried across chunks), over `vae_chunks` chunks after one warm-up.
- end-to-end FPS: pixel frames per chunk / (median chunk time + median decode time): the
  streaming pipeline with a synchronous decoder on the same GPU.
- pipelined end-to-end FPS (`pipeline_chunks` > 0): the chunk loop continues for that many more
  chunks, each pushed to the run's decoder role (the synchronous decoder, or vae_async's); pixel
  frames of all but the first of them / host wall time from the start of the second one's denoise
  until the last frame is on the host. This is what a viewer of the stream gets, overlap included.
"""
from __future__ import annotations

import logging
import statistics
import time
from typing import TYPE_CHECKING, Any

import torch

from longlive.assembly import build_codec, build_model, build_sampler, build_text_encoder, make_decoder, new_chunk_loop
from longlive.pipeline import ChunkLoop, chunk_noise
from longlive.prompts import chunk_prompts, single_prompt
from longlive.quant.format import forward_context

if TYPE_CHECKING:
    from longlive.run import RunContext

log = logging.getLogger(__name__)

_ATTENTION = ("attention", "fmha", "flash", "cudnn", "sdpa", "flex")
_GEMM = ("gemm", "matmul", "nvjet", "cutlass", "xmma", "sm90_", "cublas", "aten::addmm", "aten::mm", "aten::bmm")


def run_benchmark(run: RunContext) -> dict:
    exp, b, s = run.experiment, run.experiment.bench, run.experiment.sampler
    cuda = run.device.type == "cuda"
    preset, codec_spec, geometry = run.preset, run.codec_spec, run.geometry
    chunks = b.warmup_chunks + b.measure_chunks + b.profile_chunks + b.pipeline_chunks
    schedule = chunk_prompts(single_prompt("benchmark", chunks * s.frames_per_chunk), num_frames=chunks *
                             s.frames_per_chunk, frames_per_chunk=s.frames_per_chunk)
    if cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    model = build_model(run)
    loop = new_chunk_loop(run, model=model, sampler=build_sampler(run), text=build_text_encoder(run), geometry=geometry)
    state = loop.state
    shape = geometry.latent_shape(s.frames_per_chunk, codec_spec.latent_channels)
    noise = [chunk_noise(shape, i, exp.run.seed, run.device, run.dtype) for i in range(chunks)]
    state.context("benchmark")  # embed the prompt before timing
    chunk_s, outputs = _timed_chunks(loop, schedule[: b.warmup_chunks + b.measure_chunks], noise, cuda)
    steady = chunk_s[b.warmup_chunks:]
    pixel_frames = s.frames_per_chunk * codec_spec.temporal_stride
    result = {
        "preset": preset.name, "height": s.height, "width": s.width, "steps": s.steps, "guidance": s.guidance,
        "frames_per_chunk": s.frames_per_chunk, "window_frames": s.window_frames, "chunk_tokens": geometry.chunk_tokens,
        "dtype": str(run.dtype).removeprefix("torch."), "attention": model.attention_backend,
        "compile": exp.model.compile, "warmup_chunks": b.warmup_chunks, "measured_chunks": len(steady),
        "chunk_seconds": [round(x, 5) for x in chunk_s],
        "chunk_seconds_median": statistics.median(steady),
        "denoise_fps": pixel_frames / statistics.median(steady),
        "kv_cache_gib": state.cache.nbytes / 2**30,
    }
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(run.device) / 2**30
        result["device_name"] = torch.cuda.get_device_name(run.device)
    timed = b.warmup_chunks + b.measure_chunks
    if b.profile_chunks:
        result["time_split"] = _profile(loop, schedule[timed: timed + b.profile_chunks], noise, cuda)
    if b.pipeline_chunks:
        first = timed + b.profile_chunks
        seconds = _pipelined_seconds(run, loop, schedule[first:], noise)
        result["pipeline_decoder"] = _decoder_name(run)
        result["pipelined_end_to_end_fps"] = pixel_frames * (b.pipeline_chunks - 1) / seconds
    del state, loop, model
    if b.vae_chunks:
        decode_s = _vae_decode_seconds(run, outputs[-1], b.vae_chunks, cuda)
        result["vae_decode_chunk_seconds_median"] = decode_s
        result["vae_decode_fps"] = pixel_frames / decode_s
        result["end_to_end_fps"] = pixel_frames / (result["chunk_seconds_median"] + decode_s)
    result["summary"] = _summary(result)
    for key in ("denoise_fps", "peak_memory_gib", "vae_decode_fps", "end_to_end_fps", "pipelined_end_to_end_fps"):
        if key in result:
            run.log(0, {f"bench/{key}": result[key]})
    return result


def _timed_chunks(loop: ChunkLoop, schedule: list, noise: list, cuda: bool) -> tuple[list[float], list]:
    """Run the chunks; per-chunk wall times from CUDA events (read after the loop) or the host clock."""
    marks, outputs = [], []
    with torch.inference_mode(), forward_context(loop.state.model):  # a quantization format's context, if any
        for chunk in schedule:
            start = _mark(cuda)
            outputs.append(loop.step(chunk, noise[chunk.index]))
            marks.append((start, _mark(cuda)))
        if cuda:
            torch.cuda.synchronize()
    return [_elapsed(a, z, cuda) for a, z in marks], outputs


def _mark(cuda: bool) -> Any:
    if not cuda:
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _elapsed(start: Any, end: Any, cuda: bool) -> float:
    return start.elapsed_time(end) / 1000 if cuda else end - start


def _profile(loop: ChunkLoop, schedule: list, noise: list, cuda: bool) -> dict:
    """Kernel time by class over the given chunks (fractions of the total device time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with torch.inference_mode(), forward_context(loop.state.model), profile(activities=activities) as prof:
        for chunk in schedule:
            loop.step(chunk, noise[chunk.index])
        if cuda:
            torch.cuda.synchronize()
    totals = {"attention": 0.0, "gemm": 0.0, "other": 0.0}
    for evt in prof.key_averages():
        device_us = getattr(evt, "self_device_time_total", 0.0) if cuda else evt.self_cpu_time_total
        if device_us <= 0:
            continue
        name = evt.key.lower()
        kind = "attention" if any(k in name for k in _ATTENTION) else "gemm" if any(k in name for k in _GEMM) else "other"
        totals[kind] += device_us
    total = sum(totals.values()) or 1.0
    split = {k: round(v / total, 4) for k, v in totals.items()}
    split["device_ms_per_chunk"] = round(total / 1000 / max(1, len(schedule)), 2)
    top = sorted(prof.key_averages(), key=lambda e: -(getattr(e, "self_device_time_total", 0.0) if cuda
                                                       else e.self_cpu_time_total))[:12]
    split["top_kernels"] = [[e.key[:90], round((getattr(e, "self_device_time_total", 0.0) if cuda
                                               else e.self_cpu_time_total) / total, 4)] for e in top]
    return split


def _pipelined_seconds(run: RunContext, loop: ChunkLoop, schedule: list, noise: list) -> float:
    """Host wall time of chunks 2..N through the loop and the run's decoder, until the last frame is on the host."""
    decoder = make_decoder(run, build_codec(run))
    start = None
    try:
        with torch.inference_mode(), forward_context(loop.state.model):
            for position, chunk in enumerate(schedule):
                if position == 1:
                    start = time.perf_counter()
                decoder.push(position, loop.step(chunk, noise[chunk.index]))  # the decoder's own index from 0
                decoder.ready()
            decoder.flush()
    finally:
        decoder.close()
    return time.perf_counter() - start


def _decoder_name(run: RunContext) -> str:
    """Which plugin answers the decoder role (pluggy calls the last registered first; "core" = synchronous)."""
    impls = run.hook.longlive_make_decoder.get_hookimpls()
    return "synchronous" if impls[-1].plugin_name == "core" else impls[-1].plugin_name


def _vae_decode_seconds(run: RunContext, latents: torch.Tensor, chunks: int, cuda: bool) -> float:
    """Median time to stream-decode one chunk of latents (after one warm-up chunk)."""
    codec = build_codec(run)
    state = codec.decode_stream()
    times = []
    with torch.inference_mode():
        for i in range(chunks + 1):
            start = _mark(cuda)
            codec.decode_chunk(state, latents)
            end = _mark(cuda)
            if cuda:
                torch.cuda.synchronize()
            if i:
                times.append(_elapsed(start, end, cuda))
    return statistics.median(times)


def _summary(r: dict) -> str:
    lines = [f"denoise loop: {r['denoise_fps']:.2f} FPS (median chunk {r['chunk_seconds_median'] * 1000:.0f} ms, "
             f"{r['steps']} steps + 1 context pass, {r['measured_chunks']} chunks after {r['warmup_chunks']} warm-up)"]
    if "peak_memory_gib" in r:
        lines.append(f"peak GPU memory: {r['peak_memory_gib']:.2f} GiB (KV cache {r['kv_cache_gib']:.2f} GiB)")
    if "time_split" in r:
        t = r["time_split"]
        lines.append(f"time split: attention {t['attention']:.0%}, GEMM {t['gemm']:.0%}, other {t['other']:.0%}")
    if "vae_decode_fps" in r:
        lines.append(f"VAE streaming decode: {r['vae_decode_fps']:.2f} FPS; end to end: {r['end_to_end_fps']:.2f} FPS")
    if "pipelined_end_to_end_fps" in r:
        lines.append(f"pipelined end to end ({r['pipeline_decoder']} decoder): {r['pipelined_end_to_end_fps']:.2f} FPS")
    return "\n".join(lines)
