export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps .whl/*.whl; python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
python3 benchmarks/kv_fp4_kernel_diff.py 2>&1 | tail -6 | tee $OUT/kv_fp4_kernel_diff.txt
python3 benchmarks/kv_fp4_error.py --device cuda --experiment experiments/quickstart.toml --frames 1000 --relative-rope --out $OUT/kv_fp4_error_1000_frames.json 2>&1 | grep -v "^W \|^I " | tail -2
