#!/usr/bin/env bash
# Train the shipped toy model on the GPU machine, one stage per call (each < 10 minutes):
#   bash benchmarks/gpu_train_toy.sh pretrain   -> $OUT/toy_pretrain.safetensors (+ log, result)
#   bash benchmarks/gpu_train_toy.sh ar         -> $OUT/toy_ar.safetensors; needs
#        runs/toy_pretrain/model.safetensors (carried from the pretrain stage)
#   bash benchmarks/gpu_train_toy.sh ar2        -> $OUT/toy_ar2.safetensors; needs runs/toy_ar/model.safetensors
# The recipes are experiments/toy/{data,pretrain,train_ar}.toml; only the wall-clock budget
# (train.max_seconds) is set here, so a stage always ends inside one call.
set -euo pipefail
stage=$1
budget=${2:-330}
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/longlive_toy}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
[[ -d data/toy/train ]] || python3 -m longlive run experiments/toy/data.toml --run-dir /tmp/toy_data 2>&1 | tail -2
case $stage in
  pretrain) exp=experiments/toy/pretrain.toml; dir=runs/toy_pretrain ;;
  ar) exp=experiments/toy/train_ar.toml; dir=runs/toy_ar ;;
  ar2) exp=experiments/toy/train_ar2.toml; dir=runs/toy_ar2 ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
python3 -m longlive run "$exp" --run-dir "$dir" --set train.steps=100000 --set train.max_seconds="$budget" 2>&1 \
  | grep -v "USDT\|profiler_st" | tail -12
cp "$dir/model.safetensors" "$OUT/toy_$stage.safetensors"
cp "$dir/log.txt" "$OUT/toy_$stage.log"
cp "$dir/result.json" "$OUT/toy_$stage.result.json"
cp "$dir/experiment.toml" "$OUT/toy_$stage.experiment.toml"
