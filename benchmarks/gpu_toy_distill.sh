#!/usr/bin/env bash
# Issue #27 on one GPU (device kind nvidia-h200 or nvidia-h100-x1), part by part; each part ends
# inside the device tool's 10 minutes a call, and everything it makes goes into one archive in
# $OUT (the tool returns at most 8 files):
#   bash benchmarks/gpu_toy_distill.sh dmd4     DMD 4-step LoRA student (train.max_seconds=480)  -> runs/toy_dmd_4step
#   bash benchmarks/gpu_toy_distill.sh dmd2     DMD 2-step LoRA student (train.max_seconds=480)  -> runs/toy_dmd_2step
#   bash benchmarks/gpu_toy_distill.sh dmd [S]  both students side by side on the one GPU (train.max_seconds=S, default 360)
#   bash benchmarks/gpu_toy_distill.sh eval     held-out ToyBench of the undistilled model at 8/4/2 steps and
#                                               of the students (benchmarks/dmd_toy_eval.py, 32 clips of 10 s)
#   bash benchmarks/gpu_toy_distill.sh nvfp4    NVFP4 teacher-forcing fine-tune (emulated W4A4, mse) and its
#                                               unquantized control, then held-out ToyBench: the fine-tune served
#                                               W4A4 mse, with and without kv_fp4, and the control (fp32)
# A part resumes from runs/ when the machine is still warm; on a fresh machine carry runs/ back
# (run(carry=[".whl", "runs"])) after unpacking the previous archive into runs/. Recipes and the CPU
# smoke runs: docs/dmd.md (4. toy world), docs/quantization.md (Measurements). Needs .whl/ carried
# (webdataset, braceexpand, setuptools, fouroversix built with SKIP_CUDA_BUILD=1; benchmarks/README.md).
set -uo pipefail
part=${1:?usage: gpu_toy_distill.sh dmd4|dmd2|dmd|eval|nvfp4}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
FINAL=${OUT:-/tmp/longlive_distill}
mkdir -p "$FINAL"
OUT=$(mktemp -d)
trap 'tar czf "$FINAL/distill_$part.tar.gz" -C "$OUT" .' EXIT
python3 -m pip install -q --no-index --no-deps .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . -e examples/longlive-quant-mxfp4
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  git rev-parse --short HEAD 2>/dev/null
  date -u +%Y-%m-%dT%H:%M:%SZ
} | tee "$OUT/environment.txt"
SECONDS=0
[[ -d data/toy_small/train ]] || python3 -m longlive run experiments/toy/data_small.toml \
  --set plugins.toyworld.data_workers=8 --run-dir /tmp/data_small > "$OUT/data_small.log" 2>&1
train() {  # $1 run name, $2 experiment, then --set overrides; resumes from runs/$1 if it is there
  local name=$1 exp=$2; shift 2
  python3 -m longlive run "$exp" --set 'run.device="cuda"' "$@" --run-dir "runs/$name" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? $(tail -1 "$OUT/$name.log") (${SECONDS} s)" | tee -a "$OUT/summary.txt"
  mkdir -p "$OUT/runs/$name"
  cp runs/"$name"/{result.json,log.txt} "$OUT/runs/$name/" 2>/dev/null
  cp runs/"$name"/*.safetensors "$OUT/runs/$name/" 2>/dev/null  # toy weights: a few MB each
}
evaluate() {  # $1 name, $2 experiment, then --set overrides
  local name=$1 exp=$2; shift 2
  python3 -m longlive run "$exp" --set 'run.device="cuda"' --set 'run.dtype="fp32"' "$@" --run-dir "/tmp/eval_$name" \
    > "$OUT/eval_$name.log" 2>&1
  cp "/tmp/eval_$name/result.json" "$OUT/toy_eval_$name.json" 2>/dev/null
  echo "$name: $(tail -1 "$OUT/eval_$name.log") (${SECONDS} s)" | tee -a "$OUT/summary.txt"
}
case $part in
  dmd4) train toy_dmd_4step experiments/toy/train_dmd_4step.toml --set train.max_seconds=480 ;;
  dmd2) train toy_dmd_2step experiments/toy/train_dmd_2step.toml --set train.max_seconds=480 ;;
  dmd)
    train toy_dmd_4step experiments/toy/train_dmd_4step.toml --set train.max_seconds="${2:-360}" &
    train toy_dmd_2step experiments/toy/train_dmd_2step.toml --set train.max_seconds="${2:-360}" &
    wait ;;
  eval)
    python3 benchmarks/dmd_toy_eval.py --device cuda --clips 32 --frames 80 \
      --student 4=runs/toy_dmd_4step/student_lora.safetensors \
      --student 2=runs/toy_dmd_2step/student_lora.safetensors --out "$OUT/gpu_dmd_toy_eval.json" \
      > "$OUT/dmd_toy_eval.log" 2>&1
    echo "dmd eval: exit $? (${SECONDS} s)" | tee -a "$OUT/summary.txt" ;;
  nvfp4)
    train toy_ft_nvfp4 experiments/toy/train_ar_nvfp4.toml --set train.max_seconds=300 &
    train toy_ft_control experiments/toy/train_ar_nvfp4.toml --set 'quant.generator="none"' --set train.max_seconds=300 &
    wait
    evaluate ft_nvfp4_w4a4_mse experiments/toy/eval_ar_w4a4_mse.toml --set "model.checkpoint=\"$PWD/runs/toy_ft_nvfp4/model.safetensors\"" &
    evaluate ft_nvfp4_w4a4_mse_kv_fp4 experiments/toy/eval_ar_w4a4_mse.toml \
      --set "model.checkpoint=\"$PWD/runs/toy_ft_nvfp4/model.safetensors\"" --set 'run.plugins=["toyworld","quant_4o6","kv_fp4"]' &
    evaluate ft_control experiments/toy/eval_ar.toml --set "model.checkpoint=\"$PWD/runs/toy_ft_control/model.safetensors\"" &
    evaluate w4a4_mse experiments/toy/eval_ar_w4a4_mse.toml &
    evaluate bf16 experiments/toy/eval_ar.toml &
    wait ;;
  *) echo "unknown part $part; use dmd4, dmd2, dmd, eval or nvfp4" >&2; exit 2 ;;
esac
echo "total ${SECONDS} s" | tee -a "$OUT/summary.txt"
