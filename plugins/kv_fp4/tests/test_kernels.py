"""kv_fp4 kernels: the interpreter run against the reference (in a child process), backend choice."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from longlive_plugins.kv_fp4 import reference
from longlive_plugins.kv_fp4.backend import select_backend

REPO = Path(__file__).resolve().parents[3]
INTERPRETED = Path(__file__).with_name("interpreted_kernels.py")


def test_kernels_equal_the_reference_under_the_triton_interpreter():
    # A child pytest with TRITON_INTERPRET=1 set before triton is imported (see interpreted_kernels.py).
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(INTERPRETED)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 40 and "skipped" not in result.stdout, result.stdout[-2000:]


def test_select_backend_triton_on_cuda_reference_elsewhere():
    cpu = select_backend("cpu")
    assert cpu.name == "reference" and cpu.quantize_chunk is reference.quantize_chunk_reference
    assert select_backend(torch.device("cuda", 0)).name == "triton"  # chosen, not launched
