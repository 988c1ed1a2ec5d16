#!/usr/bin/env bash
# Balanced vs naive SP teacher-forcing training on 4 GPUs of one host (issue #26 item 3): one training
# step of the 5B DiT on a 16-s clip (96 latent frames, 704x1280: 2 x 84,480 tokens), sp = 4, BF16
# autocast, FP32 master weights, blocks checkpointed, gradients all-reduced, fused AdamW
# (benchmarks/sp_train_step.py). Reports s/iter, tokens/s, MFU (H200 dense BF16 989 TFLOP/s) and peak
# memory per rank, then a table.
#   bash benchmarks/gpu_sp_train.sh                 # on the GPU machine, from the repository root
#   bash benchmarks/gpu_sp_train.sh balanced        # one layout only (each run stays under 10 minutes)
#   bash benchmarks/gpu_sp_train.sh --dry-run       # the same commands on the CPU: 4 gloo processes, the
#                                                   # small DiT, tiny shapes (proves the commands)
# Results land in $OUT (default /tmp/longlive_sp_train): sp4_<layout>.json, <layout>.log, summary.txt.
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/longlive_sp_train}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
layouts=(balanced naive)
shape=(--frames 96 --height 704 --width 1280 --frames-per-chunk 8 --warmup 2 --steps 3)
if [[ ${1:-} == --dry-run ]]; then
  export OMP_NUM_THREADS=1
  shape=(--device cpu --preset small --attention sdpa --frames 8 --height 64 --width 64 --frames-per-chunk 2
         --warmup 1 --steps 1)
elif [[ -n ${1:-} ]]; then
  layouts=("$1")
fi
if [[ ${1:-} != --dry-run ]]; then
  python3 -m pip install -q --no-index --no-deps .whl/*.whl
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
    date -u +%Y-%m-%dT%H:%M:%SZ
  } | tee "$OUT/environment.txt"
fi
for layout in "${layouts[@]}"; do
  echo "== sp 4, $layout layout"
  timeout 540 $PY -m torch.distributed.run --standalone --nproc_per_node=4 benchmarks/sp_train_step.py \
    --layout "$layout" "${shape[@]}" --out "$OUT/sp4_$layout.json" > "$OUT/$layout.log" 2>&1 \
    || { echo "$layout failed or timed out (rc $?); last lines:"; tail -20 "$OUT/$layout.log"; }
  grep "^step" "$OUT/$layout.log" | tail -5 || true
done
$PY - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'layout':<9} {'s/iter':>7} {'tokens/s':>9} {'MFU':>6} {'peak GiB per rank':<28} loss tokens per rank")
for path in sorted(out.glob("sp4_*.json")):
    r = json.loads(path.read_text())
    peaks = ", ".join(f"{x:.1f}" for x in r["peak_memory_gib_per_rank"])
    print(f"{r['layout']:<9} {r['seconds_per_step']:>7.2f} {r['tokens_per_s']:>9.0f} {r['mfu']:>6.1%} {peaks:<28} "
          f"{r['loss_tokens_per_rank']}")
PY
