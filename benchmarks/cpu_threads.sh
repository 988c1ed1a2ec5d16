#!/usr/bin/env bash
# Quickstart wall time with torch CPU threads 1 vs 2, interleaved (t1, t2, t1, t2, ...), with the
# load average before each run. Usage: bash benchmarks/cpu_threads.sh [ROUNDS] > result.txt
# Run once on an idle machine and once on a busy one (docs/benchmarks.md, "CPU threads").
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(python -c 'import torch; print("torch", torch.__version__)')"
echo "threads wall_s user_s load_1min"
for _ in $(seq "$rounds"); do
  for threads in 1 2; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    out=$(mktemp -d)
    /usr/bin/time -f "%e %U" -o "$out/time" python -m longlive run experiments/quickstart.toml \
      --set run.threads=$threads --run-dir "$out/run" > "$out/log" 2>&1 || { tail -3 "$out/log" >&2; exit 1; }
    echo "$threads $(cat "$out/time") $load"
    rm -rf "$out"
  done
done
