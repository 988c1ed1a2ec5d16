#!/usr/bin/env bash
# Stage-1 (bidirectional pretraining) recipe ablation on a 4-GPU machine: one variant per GPU,
# the same wall-clock budget each, then held-out ToyBench of each in its native mode (one
# 32-frame clip at once, 16 clips). Writes $OUT/variants.json and each variant's training log.
#   bash benchmarks/gpu_toy_variants.sh [BUDGET_S]      (device kind nvidia-h200-x4; ran with 240)
# Variants (plugins.toyworld settings): v0 velocity dim 256 | v1 sample dim 256 | v2 sample
# dim 320 | v3 sample dim 320 with compiled blocks. The trained weights stay in runs/variant_*.
set -euo pipefail
budget=${1:-300}
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=8  # 4 processes on one host: with all cores each, data loading stalls (100 steps in 340 s)
OUT=${OUT:-/tmp/longlive_toy}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
[[ -d data/toy/train ]] || python3 -m longlive run experiments/toy/data.toml --run-dir /tmp/toy_data 2>&1 | tail -2
nvidia-smi --query-gpu=name --format=csv,noheader | head -1 > "$OUT/gpu.txt"

variant() {  # name -> --set overrides
  case $1 in
    v0) echo "--set plugins.toyworld.prediction=\"velocity\" --set plugins.toyworld.model_dim=256" ;;
    v1) echo "--set plugins.toyworld.prediction=\"sample\" --set plugins.toyworld.model_dim=256" ;;
    v2) echo "--set plugins.toyworld.prediction=\"sample\" --set plugins.toyworld.model_dim=320" ;;
    v3) echo "--set plugins.toyworld.prediction=\"sample\" --set plugins.toyworld.model_dim=320 --set model.compile=true" ;;
  esac
}
i=0
for v in v0 v1 v2 v3; do
  # shellcheck disable=SC2046
  CUDA_VISIBLE_DEVICES=$i python3 -m longlive run experiments/toy/pretrain.toml --run-dir runs/variant_$v \
    --set train.steps=100000 --set train.max_seconds="$budget" --set train.eval_every=0 $(variant $v) \
    > "$OUT/train_$v.log" 2>&1 &
  i=$((i + 1))
done
wait
i=0
for v in v0 v1 v2 v3; do
  # shellcheck disable=SC2046
  CUDA_VISIBLE_DEVICES=$i python3 -m longlive run experiments/toy/eval_bidirectional.toml --run-dir runs/eval_$v \
    --set run.device=\"cuda\" --set model.checkpoint=\"../../runs/variant_$v/model.safetensors\" \
    --set sampler.num_frames=32 --set sampler.frames_per_chunk=32 --set sampler.window_frames=32 \
    $(variant $v | sed 's/--set model.compile=true//') > "$OUT/eval_$v.log" 2>&1 &
  i=$((i + 1))
done
wait
python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1]); rows = {}
for v in ("v0", "v1", "v2", "v3"):
    ev = Path(f"runs/eval_{v}/toy_eval.json")
    result = Path(f"runs/variant_{v}/result.json")
    res = json.loads(result.read_text()) if result.exists() else {}
    rows[v] = {"eval": json.loads(ev.read_text())["mean"] if ev.exists() else None,
               "steps": res.get("steps"), "loss": res.get("loss"),
               "last_losses": (res.get("losses") or [])[-5:]}
(out / "variants.json").write_text(json.dumps(rows, indent=2))
print(json.dumps(rows, indent=1))
EOF
