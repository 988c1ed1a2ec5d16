"""Helpers of the training tests: tiny toy-world shards and a CPU training run of the debug DiT."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from longlive.registry import hookimpl

SIZE = 32  # pixels; toy codec stride 4 -> 8x8 latents -> 4x4 tokens per latent frame
FPS = 8.0


def write_toy_shards(directory: Path, *, num_clips: int, clips_per_shard: int, frames: int, seed: int = 0) -> str:
    """Toy-world shards (toyworld's writer; chunks of 2 latent frames, codec factor 1); returns a brace pattern."""
    from longlive_plugins.toyworld.shards import write_shards

    paths = write_shards(directory, num_clips, clips_per_shard, seed, "train", frames, size=SIZE, fps=FPS,
                         max_shots=2, chunk_frames=2, temporal_factor=1)
    return str(directory / f"train-{{000000..{len(paths) - 1:06d}}}.tar")


def toy_table(data: str, **train) -> dict:
    """An experiment table: toyworld plugin, debug DiT (text_dim 32 = the toy text encoder's), 32x32 px."""
    return {
        "run": {"name": "train-test", "task": "train", "device": "cpu", "seed": 3, "plugins": ["toyworld"],
                "threads": 1},  # pinned: the automatic count follows the CPU load, and exact-resume tests compare bits
        "model": {"preset": "debug", "codec": "toy-patch", "text_encoder": "toy-words"},
        "sampler": {"name": "fewstep", "height": SIZE, "width": SIZE, "num_frames": 4, "frames_per_chunk": 2,
                    "window_frames": 4, "steps": 2},
        "train": {"data": data, "num_frames": 4, "steps": 6, "batch_size": 2,
                  "lr": 1e-3, "log_every": 1, "save_every": 0, **train},
        "plugins": {"toyworld": {"size": SIZE, "fps": FPS}},
    }


def recipe_table(data: str, **train) -> dict:
    """`toy_table` with half the samples I2V and every error-recycling injection on (4 buckets of 8)."""
    recycling = {"enabled": True, "buckets": 4, "capacity": 8, "context_probability": 0.7,
                 "latent_probability": 0.5, "noise_probability": 0.5}
    return toy_table(data, i2v_probability=0.5, error_recycling=recycling, **train)


def torchrun(worker: Path, *args: str, nproc: int = 2, timeout: float = 300) -> tuple[int, str]:
    """Run `worker` under `torchrun --standalone` with `nproc` CPU ranks (OMP_NUM_THREADS=1) in its
    own process group, killed whole on a timeout so no rank outlives the test; (returncode, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(worker), *args]
    proc = subprocess.Popen(cmd, cwd=worker.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, stderr


def dmd_table(data: str, start: str, *, steps: int, batch_size: int = 1, **dmd) -> dict:
    """A DMD experiment over `toy_table`: LoRA rank 4 from `start`, 2-step UniPC rollouts, generator every 2nd step."""
    table = toy_table(data, steps=steps, lora_rank=4, init_from=start, save_every=2, batch_size=batch_size,
                      export="student.safetensors")
    table["run"]["plugins"] = ["toyworld", "dmd"]
    table["sampler"]["name"] = "unipc"
    table["plugins"]["dmd"] = {"generator_every": 2, "generator_lr": 1e-3, "critic_lr": 1e-3, **dmd}
    return table


def make_toy_run(table: dict, run_dir: Path | None, *extra_plugins):
    """A CPU RunContext of `table`; `extra_plugins` (objects with hookimpls) are registered too."""
    from longlive.config import experiment_from_table
    from longlive.run import make_run

    run = make_run(experiment_from_table(table), run_dir=run_dir, create_dir=run_dir is not None)
    for i, plugin in enumerate(extra_plugins):
        run.pm.register(plugin, name=f"test-{i}")
    return run


class LossLog:
    """Collects train/loss by step (a test plugin); optionally raises at `stop_at` to simulate a crash."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.losses: dict[int, float] = {}
        self.scalars: dict[int, dict] = {}
        self.stop_at = stop_at

    @hookimpl
    def longlive_log(self, step, scalars, run):
        self.scalars.setdefault(step, {}).update(scalars)
        if "train/loss" in scalars:
            self.losses[step] = scalars["train/loss"]
            if step == self.stop_at:
                raise KeyboardInterrupt(f"simulated interruption at step {step}")
