#!/usr/bin/env bash
# Quantization formats on one GPU (results in $OUT, recorded in docs/quantization.md / benchmarks.md):
# fouroversix's Triton quantize against its PyTorch backend on this GPU, and held-out ToyBench
# (eval_ar's 32 clips) of the toy model with emulated W4A4 static_6 and mse on the GPU.
# Needs .whl/ carried (fouroversix built with SKIP_CUDA_BUILD=1, setuptools): run(carry=[".whl"]).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/longlive_quant}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
python3 benchmarks/fouroversix_backends.py --out "$OUT/fouroversix_backends_h200.json" 2>&1 | tail -16
for rule in static6 mse; do
  python3 -m longlive run "experiments/toy/eval_ar_w4a4_$rule.toml" --set 'run.device="cuda"' \
    --run-dir "/tmp/eval_w4a4_$rule" 2>&1 | tail -1
  cp "/tmp/eval_w4a4_$rule/result.json" "$OUT/toy_eval_w4a4_${rule}_h200.json"
done
