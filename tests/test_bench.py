"""The bench task end to end on the CPU with the debug model (the GPU numbers are in docs/benchmarks.md)."""
from __future__ import annotations

import json
from pathlib import Path

from longlive.cli import main

BENCH = Path(__file__).parents[1] / "experiments" / "bench" / "bf16_5b.toml"
DEBUG = ['run.device="cpu"', 'run.dtype="fp32"', 'model.preset="debug"', 'model.codec="wan2.2-vae-debug"',
         "model.compile=false", "sampler.height=64", "sampler.width=64", "sampler.frames_per_chunk=2",
         "sampler.window_frames=4", "bench.warmup_chunks=2", "bench.measure_chunks=3", "bench.vae_chunks=2"]


def test_bench_reports_every_metric(tmp_path):
    args = ["run", str(BENCH), "--run-dir", str(tmp_path)]
    for item in DEBUG:
        args += ["--set", item]
    assert main(args) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["measured_chunks"] == 3 and len(result["chunk_seconds"]) == 5
    assert result["denoise_fps"] > 0 and result["vae_decode_fps"] > 0 and result["end_to_end_fps"] > 0
    split = result["time_split"]
    assert abs(split["attention"] + split["gemm"] + split["other"] - 1) < 1e-3 and split["gemm"] > 0


def test_bench_pipelined_end_to_end_through_the_decoder_role(tmp_path):
    args = ["run", str(BENCH), "--run-dir", str(tmp_path), "--set", "bench.pipeline_chunks=3",
            "--set", 'run.plugins=["vae_async"]']
    for item in DEBUG:
        args += ["--set", item]
    assert main(args) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["pipeline_decoder"] == "vae_async" and result["pipelined_end_to_end_fps"] > 0
    assert "pipelined end to end (vae_async decoder)" in result["summary"]
