#!/usr/bin/env bash
# The whole stack on one GPU (issue "GPU run (one H200)"); results in $OUT, recorded in docs/benchmarks.md.
# 5B geometry, random weights, 1280x704, chunk 8, window 32, 4 steps + context pass (experiments/bench/bf16_5b.toml).
#   bash benchmarks/gpu_stack.sh tests     GPU-only tests (kv_fp4 kernels against the reference, vae_async, ...),
#                                          then the denoise loop with the NVFP4 KV cache (kv_fp4, static_6)
#   bash benchmarks/gpu_stack.sh speed     BF16 / vae_async stream / FP8 (+ vae_async stream): denoise-loop FPS,
#                                          peak memory, time split, pipelined end-to-end FPS through the decoder
#   bash benchmarks/gpu_stack.sh short     tests, kv_fp4, FP8's output error (each shortened) for a small budget
#   bash benchmarks/gpu_stack.sh extra     FP8 with kv_fp4,
#                                          and FP8's model-output error against BF16 (benchmarks/quant_model_error.py)
# Needs .whl/ carried (benchmarks/README.md): run(command="bash benchmarks/gpu_stack.sh speed", carry=[".whl"]).
set -uo pipefail
part=$1
export PYTHONUNBUFFERED=1
# The device machine returns at most 8 files from $OUT: everything is written to a scratch folder
# and packed into one archive there at exit (also after a failure or the time limit).
FINAL=${OUT:-/tmp/longlive_stack}
mkdir -p "$FINAL"
OUT=$(mktemp -d)
pack() { tar czf "$FINAL/stack_$part.tar.gz" -C "$OUT" .; }
trap pack EXIT
trap 'exit 143' TERM  # a time limit's SIGTERM still packs what is done
python3 -m pip install -q --no-index --no-deps .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)"
  date -u +%Y-%m-%dT%H:%M:%SZ
} | tee "$OUT/environment.txt"
SECONDS=0
bench() {  # $1 name, then --set overrides
  local name=$1; shift
  python3 -m longlive run experiments/bench/bf16_5b.toml "$@" --run-dir "/tmp/bench_$name" 2>&1 \
    | grep -v "USDT\|profiler_st" > "$OUT/bench_$name.log"
  cp "/tmp/bench_$name/result.json" "$OUT/bench_$name.json" 2>/dev/null
  echo "== $name (${SECONDS} s)"; tail -6 "$OUT/bench_$name.log"
  pack
}
STREAM=(--set 'plugins.vae_async.mode="stream"' --set bench.pipeline_chunks=8)
FP8=(--set 'quant.generator="fp8_rowwise"' --set 'quant.mode="real"')
case $part in
  tests)
    python3 -m pytest -q -m gpu tests/gpu plugins -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
    bench kv_fp4 --set 'run.plugins=["kv_fp4"]' --set bench.vae_chunks=0 ;;
  speed)
    bench bf16 --set bench.pipeline_chunks=8
    bench bf16_vae_stream --set 'run.plugins=["vae_async"]' "${STREAM[@]}"
    bench fp8_vae_stream --set 'run.plugins=["quant_fp8","vae_async"]' "${FP8[@]}" "${STREAM[@]}" ;;
  extra)
    bench fp8_kv_fp4 --set 'run.plugins=["quant_fp8","kv_fp4"]' "${FP8[@]}" --set bench.vae_chunks=0
    python3 benchmarks/quant_model_error.py --experiment experiments/bench/bf16_5b.toml --formats fp8_rowwise \
      --plugins quant_fp8 --mode real --set model.compile=false --chunks 6 --out "$OUT/fp8_model_error_5b.json" 2>&1 \
      | grep -v Warn | tail -3 ;;
  short)  # what fits in a short device budget: the GPU tests, kv_fp4, FP8's output error
    timeout 120 python3 -m pytest -q -m gpu tests/gpu plugins -p no:cacheprovider 2>&1 | tail -15 > "$OUT/gpu_tests.txt"
    tail -3 "$OUT/gpu_tests.txt"; pack
    bench kv_fp4 --set 'run.plugins=["kv_fp4"]' --set bench.vae_chunks=0 --set bench.profile_chunks=0
    timeout 120 python3 benchmarks/quant_model_error.py --experiment experiments/bench/bf16_5b.toml --formats fp8_rowwise \
      --plugins quant_fp8 --mode real --set model.compile=false --chunks 5 --out "$OUT/fp8_model_error_5b.json" 2>&1 \
      | grep -v Warn | tail -2; pack
    ;;
  *) echo "usage: $0 tests|speed|extra|short"; exit 2 ;;
esac
echo "total ${SECONDS} s"
