#!/usr/bin/env bash
# Balanced vs naive SP teacher-forcing training on 4 GPUs of one host (issue #26 item 3), and the FSDP2
# variants: one training step of the 5B DiT on a 16-s clip (96 latent frames, 704x1280: 2 x 84,480 tokens),
# BF16 autocast, FP32 master weights, blocks checkpointed, fused AdamW (benchmarks/sp_train_step.py).
# Reports s/iter, tokens/s, MFU (H200 dense BF16 989 TFLOP/s) and peak memory per rank, then a table.
# Variants (4 processes each):
#   balanced    sp 4, dp 1, Balanced layout, replicated weights, gradients all-reduced (what DDP does)
#   naive       sp 4, dp 1, naive layout, replicated
#   fsdp2       sp 4, dp 1, Balanced, FSDP2 sharded over the 4 ranks (BF16 params, FP32 reduction)
#   fsdp2_dp2   sp 2, dp 2, Balanced, FSDP2 sharded over the 4 ranks (2 samples per step)
#   ddp_dp2     sp 2, dp 2, Balanced, replicated (the baseline of fsdp2_dp2)
# Replicated 5B training state is 74.5 GiB per rank (FP32 weights, gradients, AdamW moments) before any
# activation: expect the replicated variants to run out of memory on 80-GB H100s; FSDP2 holds 18.6 GiB.
#   bash benchmarks/gpu_sp_train.sh                      # balanced and naive, on the GPU machine, repo root
#   bash benchmarks/gpu_sp_train.sh fsdp2 fsdp2_dp2      # named variants (each run stays under 10 minutes)
#   bash benchmarks/gpu_sp_train.sh --dry-run            # every variant on the CPU: 4 gloo processes, the
#                                                        # small DiT, tiny shapes (proves the commands)
# Results land in $OUT (default /tmp/longlive_sp_train): <variant>.json, <variant>.log, summary.txt.
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/longlive_sp_train}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
declare -A ARGS=(
  [balanced]="--layout balanced"
  [naive]="--layout naive"
  [fsdp2]="--layout balanced --data-parallel fsdp2"
  [fsdp2_dp2]="--layout balanced --sp 2 --data-parallel fsdp2"
  [ddp_dp2]="--layout balanced --sp 2"
)
variants=(balanced naive)
shape=(--frames 96 --height 704 --width 1280 --frames-per-chunk 8 --warmup 2 --steps 3)
if [[ ${1:-} == --dry-run ]]; then
  export OMP_NUM_THREADS=1
  shape=(--device cpu --preset small --attention sdpa --frames 8 --height 64 --width 64 --frames-per-chunk 2
         --warmup 1 --steps 1)
  variants=(balanced naive fsdp2 fsdp2_dp2 ddp_dp2)
elif [[ $# -gt 0 ]]; then
  variants=("$@")
fi
for variant in "${variants[@]}"; do
  [[ -n ${ARGS[$variant]:-} ]] || { echo "unknown variant $variant; use one of: ${!ARGS[*]}"; exit 2; }
done
if [[ ${1:-} != --dry-run ]]; then
  python3 -m pip install -q --no-index --no-deps .whl/*.whl
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
    date -u +%Y-%m-%dT%H:%M:%SZ
  } | tee "$OUT/environment.txt"
fi
for variant in "${variants[@]}"; do
  echo "== $variant: ${ARGS[$variant]}"
  # shellcheck disable=SC2086  # the variant's arguments split on spaces
  timeout 540 $PY -m torch.distributed.run --standalone --nproc_per_node=4 benchmarks/sp_train_step.py \
    ${ARGS[$variant]} "${shape[@]}" --out "$OUT/$variant.json" > "$OUT/$variant.log" 2>&1 \
    || { echo "$variant failed or timed out (rc $?); last lines:"; tail -20 "$OUT/$variant.log"; }
  grep "^step" "$OUT/$variant.log" | tail -5 || true
done
$PY - "$OUT" "${variants[@]}" <<'PY' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'variant':<10} {'layout':<9} {'sp':>2} {'dp':>2} {'weights':<10} {'s/iter':>7} {'tokens/s':>9} {'MFU':>6} "
      f"{'peak GiB per rank':<24} {'peak RSS GiB per rank':<24} loss tokens per rank")
for variant in sys.argv[2:]:
    path = out / f"{variant}.json"
    if not path.exists():
        print(f"{variant:<10} (no result: see {variant}.log)")
        continue
    r = json.loads(path.read_text())
    peaks = ", ".join(f"{x:.1f}" for x in r["peak_memory_gib_per_rank"])
    rss = ", ".join(f"{x:.2f}" for x in r["peak_rss_gib_per_rank"])
    weights = "sharded" if r["data_parallel"] == "fsdp2" else "replicated"
    print(f"{variant:<10} {r['layout']:<9} {r['sp']:>2} {r['dp']:>2} {weights:<10} {r['seconds_per_step']:>7.2f} "
          f"{r['tokens_per_s']:>9.0f} {r['mfu']:>6.1%} {peaks:<24} {rss:<24} {r['loss_tokens_per_rank']}")
PY
