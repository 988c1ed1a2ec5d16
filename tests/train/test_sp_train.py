"""Teacher-forcing training under sequence parallelism (2 gloo processes, one SP group) equals one process.

The trainer end to end (data, codec, objective, DDP over the group, AdamW, EMA): the Balanced and
the naive layout of the sp_balanced plugin give the single-process losses step after step (so the
same weights), and the two ranks stay bit-identical. Under FSDP2 (train.data_parallel = "fsdp2"),
4 processes as dp 2 x sp 2 with blocks checkpointed: the single-process losses, and a resume is
bit-identical.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longlive.train.trainer import run_training
from toy_setup import make_toy_run, torchrun, toy_table

HERE = Path(__file__).parent
STEPS, BATCH, ACCUM = 4, 2, 1


def _torchrun(args: list[str], nproc: int = 2) -> None:
    code, stderr = torchrun(Path(args[0]), *args[1:], nproc=nproc)
    assert code == 0, stderr[-3000:]


@pytest.fixture(scope="module")
def single(toy_shards):
    return run_training(make_toy_run(toy_table(toy_shards, batch_size=BATCH, steps=STEPS), None))


@pytest.mark.parametrize("layout", ["balanced", "naive"])
def test_sp_training_matches_single_process(layout, toy_shards, single, tmp_path):
    out = tmp_path / "sp.json"
    _torchrun([str(HERE / "ddp_worker.py"), toy_shards, str(out), str(BATCH), str(ACCUM), str(STEPS), f"layout={layout}"])
    sp = json.loads(out.read_text())
    assert sp["layout"] == f"ulysses_{layout}"
    assert sp["max_param_diff"] == 0.0  # the SP ranks hold identical replicas
    assert len(sp["losses"]) == len(single["losses"]) == STEPS
    for a, b in zip(sp["losses"], single["losses"]):
        assert abs(a - b) <= 1e-5 * abs(b), (layout, sp["losses"], single["losses"])


def test_resume_under_sp_is_bit_identical(toy_shards, tmp_path):
    """Balanced SP, 2 processes: 2 steps, then a new launch resumes to 4; steps 3-4 equal the uninterrupted run's bits."""
    def launch(steps: int, run_dir: Path) -> dict:
        out = tmp_path / f"{run_dir.name}-{steps}.json"
        _torchrun([str(HERE / "ddp_worker.py"), toy_shards, str(out), str(BATCH), str(ACCUM), str(steps),
                   "layout=balanced", f"run_dir={run_dir}"])
        return json.loads(out.read_text())

    whole = launch(4, tmp_path / "whole")
    first = launch(2, tmp_path / "resumed")
    rest = launch(4, tmp_path / "resumed")
    assert first["losses"] == whole["losses"][:2]
    assert rest["steps_run"] == 2  # it resumed at step 2
    assert rest["losses"] == whole["losses"]  # history of steps 1-2 from the checkpoint, 3-4 retraced bit for bit


def test_fsdp2_under_dp_x_sp_matches_and_resumes_bit_identically(toy_shards, single, tmp_path):
    """4 processes, dp 2 x sp 2 (Balanced), FSDP2 sharded over all 4, train.checkpoint_blocks: the losses of one
    process with the same global batch; 2 steps then a relaunch to 4 equals the uninterrupted run bit for bit."""
    def launch(steps: int, run_dir: Path) -> dict:
        out = tmp_path / f"{run_dir.name}-{steps}.json"
        _torchrun([str(HERE / "ddp_worker.py"), toy_shards, str(out), str(BATCH // 2), str(ACCUM), str(steps),
                   "layout=balanced", "sp=2", f"run_dir={run_dir}", "train.data_parallel=fsdp2",
                   "train.checkpoint_blocks=true", f"weights={out.with_suffix('.pt')}"], nproc=4)
        result = json.loads(out.read_text())
        result["weights"] = torch.load(out.with_suffix(".pt"), weights_only=True)
        return result

    whole = launch(4, tmp_path / "whole")
    assert whole["sharded"] and whole["mesh"] == {"world": 4, "dp": 2, "sp": 2, "backend": "gloo"}
    assert whole["max_param_diff"] == 0.0  # the gathered weights agree on every rank
    for a, b in zip(whole["losses"], single["losses"]):  # global batch 2 = 2 dp groups x 1 sample
        assert abs(a - b) <= 1e-5 * abs(b), (whole["losses"], single["losses"])
    first = launch(2, tmp_path / "resumed")
    rest = launch(4, tmp_path / "resumed")
    assert first["losses"] == whole["losses"][:2]
    assert rest["steps_run"] == 2 and rest["losses"] == whole["losses"]
    for part in ("model", "ema"):
        assert all(torch.equal(v, whole["weights"][part][k]) for k, v in rest["weights"][part].items()), part
