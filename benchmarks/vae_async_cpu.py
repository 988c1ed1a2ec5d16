"""vae_async and the streaming outputs on the CPU: decode overlap, and host memory of long videos.

`overlap`: for a world (toy: the toy codec and a toy DiT; wan: the debug DiT and the tiny
Wan2.2-architecture VAE), the wall time of the denoise loop alone, of decoding its latents alone
(the core's SyncDecoder), of the whole generation with the synchronous decoder and with vae_async
(thread mode), all in one process, so the ratios hold on a shared machine. Overlap = the share of
the shorter part hidden: (denoise + decode - async) / min(denoise, decode). CPU seconds
(`process_time`) are printed beside each wall time: cpu / wall is the number of cores the process
actually got, and overlap needs it above 1.

`memory`: a long generate run through `run_task` (the mp4 sink, the preview, the run end) with
VmRSS read from /proc/self/status every 0.25 s by a sampler thread; prints RSS at points of the
run and the growth per 1,000 frames over its second half.

    OMP_NUM_THREADS=1 python benchmarks/vae_async_cpu.py overlap --world toy --chunks 12
    OMP_NUM_THREADS=1 python benchmarks/vae_async_cpu.py overlap --world wan --chunks 8 --steps 40
    OMP_NUM_THREADS=1 python benchmarks/vae_async_cpu.py overlap --world toy --chunks 12 --decode-wait-s 0.05
    OMP_NUM_THREADS=1 python benchmarks/vae_async_cpu.py memory --world toy --latent-frames 4800
    OMP_NUM_THREADS=1 python benchmarks/vae_async_cpu.py memory --world wan --latent-frames 1200 --decoder vae_async
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _table(world: str, latent_frames: int, plugins: list[str], steps: int) -> dict:
    if world == "toy":  # the toy codec (pixel unshuffle, 48 channels) and a small random toy DiT
        model = {"preset": "toy", "codec": "toy-patch", "text_encoder": "toy-words"}
        sampler = {"frames_per_chunk": 4, "window_frames": 16}
        plugins = ["toyworld", *plugins]
        extra = {"toyworld": {"model_dim": 128, "model_layers": 2, "score": False}}
    else:  # the debug DiT and the tiny Wan2.2-architecture VAE (4x16x16 strides, 48 channels)
        model = {"preset": "debug", "codec": "wan2.2-vae-debug", "text_encoder": "random"}
        sampler = {"frames_per_chunk": 2, "window_frames": 4}
        extra = {}
    table = {"run": {"name": f"bench_{world}", "task": "generate", "device": "cpu", "seed": 0, "plugins": plugins},
             "model": model,
             "sampler": {"height": 64, "width": 64, "num_frames": latent_frames, "steps": steps, **sampler},
             "generate": {"prompt": "a small red circle moves right steadily and bounces on a dark blue background",
                          "fps": 8.0}}
    if extra:
        table["plugins"] = extra
    return table


def _run(world: str, latent_frames: int, plugins: list[str], steps: int, run_dir: Path | None = None):
    from longlive.config import experiment_from_table
    from longlive.run import make_run

    exp = experiment_from_table(_table(world, latent_frames, plugins, steps))
    return make_run(exp, run_dir=run_dir) if run_dir else make_run(exp, create_dir=False)


class WaitingCodec:
    """A codec whose decode first waits `wait_s` without using the CPU: a stand-in for a decode that
    runs elsewhere (a GPU), so the queue and hand-over can be measured on a CPU with no core free."""

    def __init__(self, codec, wait_s: float) -> None:
        self.codec, self.wait_s = codec, wait_s

    def decode_stream(self):
        return self.codec.decode_stream()

    def decode_chunk(self, state, latents):
        time.sleep(self.wait_s)
        return self.codec.decode_chunk(state, latents)


def overlap(world: str, chunks: int, steps: int, decode_wait_s: float = 0.0) -> dict:
    import attrs

    from longlive.assembly import build_parts, new_chunk_loop, render
    from longlive.decode import SyncDecoder
    from longlive.pipeline import chunk_noise
    from longlive.prompts import chunk_prompts, single_prompt

    fpc = 4 if world == "toy" else 2
    frames = chunks * fpc
    runs = {"core": _run(world, frames, [], steps), "vae_async": _run(world, frames, ["vae_async"], steps)}
    parts = build_parts(runs["core"])
    if decode_wait_s:
        parts = attrs.evolve(parts, codec=WaitingCodec(parts.codec, decode_wait_s))
    schedule = chunk_prompts(single_prompt("a small red circle moves right steadily", frames), num_frames=frames,
                             frames_per_chunk=fpc)
    run = runs["core"]
    times = {}
    with torch.inference_mode():
        render(run, parts, schedule[:2], show_progress=False)  # warm-up
        started, cpu = time.perf_counter(), time.process_time()
        loop = new_chunk_loop(run, model=parts.model, sampler=parts.sampler, text=parts.text,
                              geometry=parts.geometry)
        shape = parts.geometry.latent_shape(fpc, parts.latent_channels, 1)
        latents = [loop.step(c, chunk_noise(shape, c.index, 0, run.device, run.dtype)) for c in schedule]
        times["denoise_s"] = time.perf_counter() - started
        times["denoise_cpu_s"] = time.process_time() - cpu
        started, cpu, decoder = time.perf_counter(), time.process_time(), SyncDecoder(parts.codec)
        for i, x in enumerate(latents):
            decoder.push(i, x)
        pixel_frames = sum(f.shape[2] for f in decoder.flush())
        times["decode_s"] = time.perf_counter() - started
        times["decode_cpu_s"] = time.process_time() - cpu
    for name in ("core", "vae_async"):
        started, cpu = time.perf_counter(), time.process_time()
        rendered = render(runs[name], parts, schedule, show_progress=False)
        times[f"{name}_total_s"] = time.perf_counter() - started
        times[f"{name}_total_cpu_s"] = time.process_time() - cpu
        assert rendered.frames == pixel_frames
    hidden = times["denoise_s"] + times["decode_s"] - times["vae_async_total_s"]
    shorter = min(times["denoise_s"], times["decode_s"])
    return {"world": world, "chunks": chunks, "steps": steps, "decode_wait_s": decode_wait_s,
            "pixel_frames": pixel_frames, **{k: round(v, 3) for k, v in times.items()},
            # no overlap to speak of when one side is < 5% of the other (the toy codec's decode)
            "overlap": round(hidden / shorter, 3) if shorter > 0.05 * max(times["denoise_s"], times["decode_s"]) else None,
            "speedup_vs_sync": round(times["core_total_s"] / times["vae_async_total_s"], 3)}


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory(world: str, latent_frames: int, steps: int, decoder: str) -> dict:
    from longlive.media import read_video
    from longlive.run import run_task

    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), _rss_mib()))
            stop.wait(0.25)

    with tempfile.TemporaryDirectory() as tmp:
        run = _run(world, latent_frames, [] if decoder == "core" else ["vae_async"], steps, Path(tmp) / "run")
        rss_before = _rss_mib()
        sampler = threading.Thread(target=sample, daemon=True)
        started = time.perf_counter()
        sampler.start()
        try:
            result = run_task(run)
        finally:
            stop.set()
            sampler.join()
        seconds = time.perf_counter() - started
        frames = read_video(Path(tmp) / "run" / "video.mp4")[0].shape[0]
    rss = [r for _, r in samples]
    at = {f"rss_mib_at_{p}pct": round(rss[min(len(rss) - 1, len(rss) * p // 100)], 1) for p in (10, 25, 50, 75, 100)}
    half = len(rss) // 2
    growth = (rss[-1] - rss[half]) / max(1e-9, result["frames"] * (len(rss) - half) / len(rss)) * 1000
    return {"world": world, "decoder": decoder, "latent_frames": latent_frames, "pixel_frames": result["frames"],
            "frames_read_back": int(frames), "seconds": round(seconds, 1), "samples": len(rss),
            "rss_mib_before_run": round(rss_before, 1), **at, "rss_mib_max": round(max(rss), 1),
            "rss_growth_mib_per_1000_frames_second_half": round(growth, 2),
            "video_float32_mib_if_kept": round(result["frames"] * 3 * 64 * 64 * 4 / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["overlap", "memory"])
    parser.add_argument("--world", choices=["toy", "wan"], default="toy")
    parser.add_argument("--chunks", type=int, default=24)
    parser.add_argument("--latent-frames", type=int, default=4800)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--decoder", choices=["core", "vae_async"], default="core")
    parser.add_argument("--decode-wait-s", type=float, default=0.0, help="overlap: wait this long per decoded "
                        "chunk without using the CPU (a stand-in for a decode on another device)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = (overlap(args.world, args.chunks, args.steps, args.decode_wait_s) if args.what == "overlap"
              else memory(args.world, args.latent_frames, args.steps, args.decoder))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
