#!/usr/bin/env bash
# Ulysses SP inference (sp_balanced) on 1, 2 and 4 GPUs of one host (issue #26 item 1): the 5B
# denoise loop (experiments/bench/sp_5b.toml: BF16, attn_sink sinks, 4 steps, 704x1280) with the
# BF16 cache and with the NVFP4 cache (kv_fp4), then a table of FPS, memory and bytes moved.
#   bash benchmarks/gpu_sp.sh                 # on the GPU machine, from the repository root
#   bash benchmarks/gpu_sp.sh --dry-run       # the same commands on the CPU: gloo, the small DiT, tiny
#                                             # shapes (proves the commands, measures nothing)
# Results land in $OUT (default /tmp/longlive_sp): one run directory per (GPUs, cache), summary.txt.
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/longlive_sp}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
tiny=()
if [[ ${1:-} == --dry-run ]]; then
  export OMP_NUM_THREADS=1
  tiny=(--set 'run.device="cpu"' --set 'run.dtype="fp32"' --set 'run.threads=1' --set 'model.preset="small"'
        --set 'model.codec="wan2.2-vae-debug"' --set 'model.compile=false' --set 'model.attention="sdpa"'
        --set sampler.height=64 --set sampler.width=64 --set sampler.frames_per_chunk=4
        --set sampler.window_frames=16 --set sampler.num_frames=16 --set sampler.steps=2
        --set plugins.attn_sink.sink_frames=4 --set plugins.attn_sink.shot_sink_frames=4
        --set plugins.attn_sink.rope_shift_frames=4 --set bench.warmup_chunks=4 --set bench.measure_chunks=2
        --set bench.profile_chunks=0 --set bench.vae_chunks=0)
else
  python3 -m pip install -q --no-index --no-deps .whl/*.whl
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
    date -u +%Y-%m-%dT%H:%M:%SZ
  } | tee "$OUT/environment.txt"
fi
for gpus in 1 2 4; do
  for cache in bf16 kv_fp4; do
    plugins='["sp_balanced", "attn_sink"]'
    [[ $cache == kv_fp4 ]] && plugins='["sp_balanced", "attn_sink", "kv_fp4"]'
    dir="$OUT/sp${gpus}_${cache}"
    rm -rf "$dir"
    echo "== $gpus process(es), $cache cache"
    $PY -m torch.distributed.run --standalone --nproc_per_node=$gpus -m longlive run experiments/bench/sp_5b.toml \
      --run-dir "$dir" --set parallel.sp=$gpus --set "run.plugins=$plugins" "${tiny[@]}" 2>&1 \
      | grep -v "USDT\|profiler_st\|random weights" | tail -4
  done
done
$PY - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'run':<12} {'denoise FPS':>11} {'chunk ms':>9} {'KV GiB/rank':>11} {'peak GiB':>8} {'MiB sent/rank/chunk':>19}")
for d in sorted(out.glob("sp*_*")):
    r = json.loads((d / "result.json").read_text())
    sent = r.get("sp", {}).get("bytes_sent_per_rank_per_chunk", 0) / 2**20
    peak = r.get("peak_memory_gib", float("nan"))
    print(f"{d.name:<12} {r['denoise_fps']:>11.2f} {r['chunk_seconds_median'] * 1000:>9.1f} {r['kv_cache_gib']:>11.3f} "
          f"{peak:>8.2f} {sent:>19.1f}")
PY
