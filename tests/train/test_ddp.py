"""2-process gloo data parallelism on CPU (torchrun): ranks stay identical and match one process.

2 ranks x 1 sample x 2 accumulated micro-steps see the same 4 samples per step as one process
with a batch of 4 (the stream hands out global batches in order), so their losses must agree.
"""
from __future__ import annotations

import json
from pathlib import Path

from longlive.train.trainer import run_training
from toy_setup import make_toy_run, torchrun, toy_table

HERE = Path(__file__).parent
STEPS, PER_RANK, ACCUM = 4, 1, 2


def test_two_rank_gloo_matches_single_process(toy_shards, tmp_path):
    out = tmp_path / "ddp.json"
    torchrun([str(HERE / "ddp_worker.py"), toy_shards, str(out), str(PER_RANK), str(ACCUM), str(STEPS)], cwd=HERE)
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2
    assert ddp["max_param_diff"] == 0.0  # DDP keeps the replicas bit-identical

    single = run_training(make_toy_run(toy_table(toy_shards, batch_size=2 * PER_RANK * ACCUM, steps=STEPS), None))
    assert len(ddp["losses"]) == len(single["losses"]) == STEPS
    for a, b in zip(ddp["losses"], single["losses"]):
        assert abs(a - b) <= 1e-4 * abs(b), (ddp["losses"], single["losses"])
