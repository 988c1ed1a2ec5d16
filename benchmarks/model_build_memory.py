"""Peak host memory (RSS) and GPU memory of building the DiT: random weights, and loading a checkpoint.

Each measurement runs in a fresh process (peak RSS is per process). Two load paths are measured:
- "before": the earlier build (commit 89d8ce1): an FP32 model on the CPU, the whole checkpoint
  read into host memory, a strict load, then a cast and move to the device in the run dtype;
- "after": longlive.assembly's phases: the meta model placed on the device in the run dtype, the
  checkpoint copied in one tensor at a time (safetensors read lazily).
The random-weight build is the same algorithm before and after (drawn on the device).

Usage (the checkpoint is written once, BF16 safetensors of the preset's shapes):
    python benchmarks/model_build_memory.py --device cuda --layers 30 --out result.json   # the 5B
    python benchmarks/model_build_memory.py --device cpu --layers 4                        # 5B width, 4 blocks
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _preset(layers: int):
    from longlive.model.presets import DIT_PRESETS

    return attrs.evolve(DIT_PRESETS["wan2.2-ti2v-5b"], num_layers=layers)


def _run(device: str):
    from longlive.config import experiment_from_table
    from longlive.run import make_run

    table = {"run": {"name": "mem", "task": "bench", "device": device, "dtype": "bf16"},
             "model": {"preset": "wan2.2-ti2v-5b", "text_encoder": "random"}, "bench": {}}
    return make_run(experiment_from_table(table), create_dir=False)


def write_checkpoint(path: Path, layers: int) -> None:
    """A checkpoint of the preset's shapes in BF16 (values from a seeded generator, layer by layer)."""
    from safetensors.torch import save_file

    from longlive.model.dit import WanDiT

    with torch.device("meta"):
        model = WanDiT(_preset(layers))
    g = torch.Generator().manual_seed(0)
    state = {name: (torch.randn(p.shape, generator=g) * 0.02).to(torch.bfloat16) for name, p in model.state_dict().items()}
    save_file(state, str(path))


def measure(mode: str, device: str, layers: int, checkpoint: str | None) -> dict:
    from longlive import assembly
    from longlive.model.dit import WanDiT

    run = _run(device)
    dev = torch.device(device)
    started = time.perf_counter()
    with torch.device("meta"):
        model = WanDiT(_preset(layers))
    if mode == "random":
        assembly.place_and_load(run, model, None, device=dev, dtype=torch.bfloat16, training=False)
    elif mode == "load_after":
        assembly.place_and_load(run, model, checkpoint, device=dev, dtype=torch.bfloat16, training=False)
    elif mode == "load_before":
        from safetensors.torch import load_file

        model = model.to_empty(device="cpu")  # FP32 on the host
        state = load_file(checkpoint, device="cpu")  # the whole file in host memory
        model.load_state_dict(state, strict=True)  # what load_strict did then
        del state
        model = model.to(device=dev, dtype=torch.bfloat16)
    else:
        raise ValueError(mode)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    out = {"mode": mode, "device": device, "layers": layers, "parameters": params, "seconds": round(seconds, 2),
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if dev.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--checkpoint", default=None, help="reuse this checkpoint instead of writing one")
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: one measurement
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.device, args.layers, args.checkpoint)))
        return
    results = {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "runs": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        checkpoint = args.checkpoint or str(Path(tmp) / "dit_bf16.safetensors")
        if not args.checkpoint:
            write_checkpoint(Path(checkpoint), args.layers)
        results["checkpoint_gib"] = os.path.getsize(checkpoint) / 2**30
        for mode in ("random", "load_before", "load_after"):
            cmd = [sys.executable, __file__, "--one", mode, "--device", args.device, "--layers", str(args.layers),
                   "--checkpoint", checkpoint]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                results["runs"].append({"mode": mode, "error": proc.stderr.strip().splitlines()[-1:]})
            else:
                results["runs"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(results["runs"][-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
