"""FSDP2 (fully_shard) of the DiT on the CPU with gloo equals the non-sharded run (torch 2.13).

2 processes: FSDP over dp = 2. 4 processes: HSDP, dp = 2 x sp = 2, with the sp_balanced Balanced
teacher-forcing layout inside each SP group. Gradients of the first step (gathered from the
shards), the global-batch losses and the weights after 3 AdamW steps match one process.
"""
from __future__ import annotations

import json

import pytest

from test_sp_train import HERE, _torchrun


@pytest.mark.parametrize("nproc,sp,lora", [(2, 1, False), (4, 2, False), (2, 1, True)])
def test_fsdp2_training_equals_unsharded(nproc, sp, lora, tmp_path):
    out = tmp_path / "fsdp2.json"
    _torchrun([str(HERE / "fsdp2_worker.py"), str(out), str(sp), *(["lora"] if lora else [])], nproc=nproc)
    r = json.loads(out.read_text())
    assert r["trained_tensors"] == (2 * 10 * 4 if lora else 123)  # LoRA: A and B of 10 linears in 4 blocks
    assert r["mesh"] == {"world": nproc, "dp": 2, "sp": sp, "backend": "gloo"}
    assert r["sharded_numel"] * 2 == r["full_numel"]  # each dp rank stores half of every parameter
    assert r["max_grad_diff"] <= 1e-6 and r["max_grad"] > 1e-3, r
    for a, b in zip(r["losses"], r["losses_ref"]):
        assert abs(a - b) <= 1e-5 * abs(b), r
    assert r["max_param_diff"] <= 2e-5, r
