#!/usr/bin/env bash
# DDP vs FSDP2 sanity table on the CPU: 2 gloo processes (dp 2, sp 1), one thread each, one teacher-forcing
# step of a random-weight DiT (benchmarks/sp_train_step.py): seconds per step and peak resident memory per
# process. Not a speed claim: gloo on a shared CPU says nothing about NCCL on GPUs (issue #26 measures those).
#   bash benchmarks/cpu_fsdp2.sh          # the small preset (1.0 M parameters) and a dim-1024, 8-block DiT
# Results: $OUT (default /tmp/longlive_cpu_fsdp2): <model>_<wrapper>.json, summary.txt.
set -euo pipefail
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/longlive_cpu_fsdp2}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
shape=(--device cpu --attention sdpa --frames 4 --height 64 --width 64 --frames-per-chunk 2 --warmup 1 --steps 3)
declare -A MODELS=([small]="--preset small" [dim1024]="--preset small --dim 1024 --layers 8")
for model in small dim1024; do
  for wrapper in ddp fsdp2; do
    # shellcheck disable=SC2086  # the model's arguments split on spaces
    $PY -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/sp_train_step.py --sp 1 \
      --data-parallel "$wrapper" ${MODELS[$model]} "${shape[@]}" --out "$OUT/${model}_$wrapper.json" \
      > "$OUT/${model}_$wrapper.log" 2>&1 || { echo "$model $wrapper failed:"; tail -20 "$OUT/${model}_$wrapper.log"; }
  done
done
$PY - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| model | parameters | wrapper | s/step (mean of 3) | peak RSS per rank (GiB) |")
print("|---|---|---|---|---|")
for model in ("small", "dim1024"):
    for wrapper in ("ddp", "fsdp2"):
        r = json.loads((out / f"{model}_{wrapper}.json").read_text())
        rss = ", ".join(f"{x:.3f}" for x in r["peak_rss_gib_per_rank"])
        print(f"| {r['preset']} | {r['parameters'] / 1e6:.1f} M | {wrapper} | {r['seconds_per_step']:.3f} | {rss} |")
PY
