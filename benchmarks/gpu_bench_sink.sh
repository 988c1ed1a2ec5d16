#!/usr/bin/env bash
# attn_sink speed check on the GPU machine: the 5B denoise loop with the plain window and with the
# sink policy at the same budget (and with relative RoPE), compiled, back to back on one machine.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/longlive_bench}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
for exp in bf16_5b bf16_5b_sink bf16_5b_sink_relative; do
  python3 -m longlive run "experiments/bench/$exp.toml" --run-dir "/tmp/$exp" --set bench.vae_chunks=0 \
    --set bench.profile_chunks=0 2>&1 | grep "denoise loop\|peak GPU\|error"
  cp "/tmp/$exp/result.json" "$OUT/$exp.json"
done
