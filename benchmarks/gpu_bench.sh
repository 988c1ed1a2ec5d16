#!/usr/bin/env bash
# GPU benchmark session: run from the repo root on the GPU machine; results land in $OUT.
#   bash benchmarks/gpu_bench.sh            (what docs/benchmarks.md records)
# Steps: environment facts, the GPU-only tests, the 5B BF16 benchmark with compiled blocks, then
# the same benchmark eager (no torch.compile) for comparison.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/longlive_bench}
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)"
  date -u +%Y-%m-%dT%H:%M:%SZ
} | tee "$OUT/environment.txt"
python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
for variant in compiled eager; do
  extra=()
  [[ $variant == eager ]] && extra=(--set model.compile=false --set bench.vae_chunks=0)
  python3 -m longlive run experiments/bench/bf16_5b.toml --run-dir "/tmp/bench_$variant" "${extra[@]}" 2>&1 \
    | grep -v "USDT\|profiler_st" | tail -8
  cp "/tmp/bench_$variant/result.json" "$OUT/bench_bf16_$variant.json"
  cp "/tmp/bench_$variant/log.txt" "$OUT/bench_bf16_$variant.log"
done
