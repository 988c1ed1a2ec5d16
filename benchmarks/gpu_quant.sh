#!/usr/bin/env bash
# Quantization formats on one GPU (results in $OUT; recorded in docs/quantization.md and docs/benchmarks.md):
#   1. every installed format's emulated path on the GPU against the CPU (benchmarks/quant_formats_devices.py),
#      and fouroversix's Triton quantize against its PyTorch backend on this GPU;
#   2. the short NVFP4 AR fine-tune of the toy model (experiments/toy/train_ar_nvfp4.toml, emulated W4A4 on the
#      GPU) and, as its control, the same recipe unquantized;
#   3. held-out ToyBench (eval_ar's 32 clips, fp32 like the CPU runs, so the numbers compare) for: unquantized,
#      W4A4 static_6, W4A4 mse, TE's NVFP4 recipe (emulated), FP8, MXFP4, the NVFP4 fine-tune served W4A4 mse (with and without kv_fp4), and
#      the unquantized fine-tune. The evaluations run side by side (the toy model is small).
# Needs .whl/ carried (fouroversix built with SKIP_CUDA_BUILD=1, setuptools, webdataset, braceexpand):
#   run(command="bash benchmarks/gpu_quant.sh", carry=[".whl"])
set -uo pipefail
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
# The device machine returns at most 8 files from $OUT: everything is written to a scratch folder
# and packed into one archive there at exit (also after a failure or the time limit).
FINAL=${OUT:-/tmp/longlive_quant}
mkdir -p "$FINAL"
OUT=$(mktemp -d)
trap 'tar czf "$FINAL/quant.tar.gz" -C "$OUT" .' EXIT
python3 -m pip install -q --no-index --no-deps .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . -e examples/longlive-quant-mxfp4
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fouroversix; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'fouroversix', fouroversix.__version__)"
  date -u +%Y-%m-%dT%H:%M:%SZ
} | tee "$OUT/environment.txt"
SECONDS=0
python3 -m longlive run experiments/toy/data_small.toml --set plugins.toyworld.data_workers=8 --run-dir /tmp/data_small 2>&1 | tail -1
train() {  # $1 name, then --set overrides
  local name=$1; shift
  timeout 200 python3 -m longlive run experiments/toy/train_ar_nvfp4.toml --set 'run.device="cuda"' "$@" --run-dir "/tmp/$name" \
    > "$OUT/$name.log" 2>&1
  echo "$name: $(tail -1 "$OUT/$name.log") (${SECONDS} s)"
}
train ft_nvfp4 &
train ft_bf16 --set 'quant.generator="none"' &
python3 benchmarks/quant_formats_devices.py --out "$OUT/quant_formats_devices.json" > "$OUT/quant_formats_devices.txt" 2>&1
python3 benchmarks/fouroversix_backends.py --out "$OUT/fouroversix_backends.json" > "$OUT/fouroversix_backends.txt" 2>&1
wait
evaluate() {  # $1 name, $2 experiment, then --set overrides
  local name=$1 exp=$2; shift 2
  timeout 300 python3 -m longlive run "$exp" --set 'run.device="cuda"' --set 'run.dtype="fp32"' "$@" --run-dir "/tmp/eval_$name" \
    > "$OUT/eval_$name.log" 2>&1
  cp "/tmp/eval_$name/result.json" "$OUT/toy_eval_$name.json" 2>/dev/null
  echo "$name: $(tail -1 "$OUT/eval_$name.log") (${SECONDS} s)"
}
MX=(--set 'run.plugins=["toyworld","quant_mxfp4"]' --set 'quant.generator="mxfp4"' --set 'quant.mode="emulate"')
evaluate bf16 experiments/toy/eval_ar.toml &
evaluate w4a4_static6 experiments/toy/eval_ar_w4a4_static6.toml &
evaluate w4a4_mse experiments/toy/eval_ar_w4a4_mse.toml &
evaluate fp8 experiments/toy/eval_ar_fp8.toml &
evaluate mxfp4 experiments/toy/eval_ar.toml "${MX[@]}" &
evaluate ft_nvfp4_w4a4_mse experiments/toy/eval_ar_w4a4_mse.toml --set 'model.checkpoint="/tmp/ft_nvfp4/model.safetensors"' &
evaluate ft_nvfp4_w4a4_mse_kv_fp4 experiments/toy/eval_ar_w4a4_mse.toml --set 'model.checkpoint="/tmp/ft_nvfp4/model.safetensors"' \
  --set 'run.plugins=["toyworld","quant_4o6","kv_fp4"]' &
evaluate ft_bf16 experiments/toy/eval_ar.toml --set 'model.checkpoint="/tmp/ft_bf16/model.safetensors"' &
evaluate te_nvfp4 experiments/toy/eval_ar_te.toml &
wait
echo "total ${SECONDS} s"
