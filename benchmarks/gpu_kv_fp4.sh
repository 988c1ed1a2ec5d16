#!/usr/bin/env bash
# kv_fp4 on one GPU: the compiled kernels against the reference (GPU tests), attention and generation
# error against the BF16 cache, held-out ToyBench (32 clips) with BF16 / static_6 / mse caches,
# and the 5B denoise loop with the NVFP4 cache. Results land in $OUT (docs/benchmarks.md).
#   bash benchmarks/gpu_kv_fp4.sh
# The GPU image lacks a few wheels (benchmarks/README.md: webdataset, braceexpand, setuptools, and
# fouroversix built here); they come from .whl/, then the repo is installed editable (entry points).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/longlive_kv_fp4}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  date -u +%Y-%m-%dT%H:%M:%SZ
} | tee "$OUT/environment.txt"
python3 -m pytest -q -m gpu plugins/kv_fp4/tests tests/gpu -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
python3 benchmarks/kv_fp4_error.py --device cuda --experiment experiments/quickstart.toml --out "$OUT/kv_fp4_error_quickstart.json"
python3 benchmarks/kv_fp4_error.py --device cuda --experiment experiments/quickstart.toml --frames 1000 --relative-rope \
  --out "$OUT/kv_fp4_error_1000_frames.json" | tail -1
for variant in bf16 static_6 mse; do
  extra=()
  [[ $variant != bf16 ]] && extra=(--set 'run.plugins=["toyworld", "kv_fp4"]' --set "plugins.kv_fp4.scale_rule=\"$variant\"")
  python3 -m longlive run experiments/toy/eval_ar.toml --set 'run.device="cuda"' "${extra[@]}" \
    --run-dir "/tmp/eval_$variant" 2>&1 | tail -1
  cp "/tmp/eval_$variant/result.json" "$OUT/toy_eval_kv_$variant.json"
done
python3 -m longlive run experiments/bench/bf16_5b.toml --set 'run.plugins=["kv_fp4"]' --set bench.vae_chunks=0 \
  --run-dir /tmp/bench_kv 2>&1 | grep -v "USDT\|profiler_st" | tail -4
cp /tmp/bench_kv/result.json "$OUT/bench_bf16_kv_fp4.json"
