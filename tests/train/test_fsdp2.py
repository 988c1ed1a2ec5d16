"""FSDP2 (fully_shard) of the DiT on the CPU with gloo (torch 2.13).

Sharding level (fsdp2_worker.py): 2 processes, FSDP over dp = 2; 4 processes, HSDP (dp 2 x sp 2 with
the sp_balanced Balanced layout); gradients of the first step (gathered from the shards), the
global-batch losses and the weights after 3 AdamW steps match one process.

Trainer level (ddp_worker.py, `train.data_parallel = "fsdp2"`, 2 processes, toy data, 2 accumulated
micro-steps per step): the same losses, weights, EMA, checkpoint and export as DDP within 1e-5; the
checkpoint has the DDP format (same keys, shapes, dtypes), a resume retraces the uninterrupted run
bit for bit, and the checkpoint resumes under DDP; LoRA (frozen base, sharded adapters) too; bf16
parameters (mixed precision) run. The dp 2 x sp 2 trainer run is in test_sp_train.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from longlive.errors import ConfigError
from test_sp_train import HERE, _torchrun

PER_RANK, ACCUM, STEPS = 1, 2, 4
FSDP2 = "train.data_parallel=fsdp2"


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


# ---- the trainer under train.data_parallel = "fsdp2" -----------------------------------------------


def _train(toy_shards: str, directory: Path, name: str, steps: int, *options: str, run_dir: Path | None = None) -> dict:
    """One 2-process launch of the toy trainer; its JSON result plus "weights" (whole model and EMA)."""
    out, weights = directory / f"{name}.json", directory / f"{name}.pt"
    run_dir = run_dir if run_dir is not None else directory / name
    _torchrun([str(HERE / "ddp_worker.py"), toy_shards, str(out), str(PER_RANK), str(ACCUM), str(steps),
               f"run_dir={run_dir}", f"weights={weights}", *options])
    result = json.loads(out.read_text())
    result["weights"] = torch.load(weights, weights_only=True)
    return result


@pytest.fixture(scope="module")
def runs(toy_shards, tmp_path_factory):
    directory = tmp_path_factory.mktemp("fsdp2_runs")
    return directory, {"ddp": _train(toy_shards, directory, "ddp", STEPS),
                       "fsdp2": _train(toy_shards, directory, "fsdp2", STEPS, FSDP2)}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _assert_close_runs(run: dict, reference: dict) -> None:
    """Losses within 1e-5 relative, whole weights and EMA within 1e-5."""
    assert len(run["losses"]) == len(reference["losses"])
    for a, b in zip(run["losses"], reference["losses"]):
        assert abs(a - b) <= 1e-5 * abs(b), (run["losses"], reference["losses"])
    for part in ("model", "ema"):
        assert _max_diff(run["weights"][part], reference["weights"][part]) <= 1e-5, part


def _same_format(a, b, path: str = "") -> float:
    """Assert `a` and `b` have the same nested structure, tensor shapes and dtypes; their max tensor difference."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, path
        return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (path, list(a)[:4], list(b)[:4])
        return max([_same_format(a[k], b[k], f"{path}.{k}") for k in a], default=0.0)
    if isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        return max([_same_format(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))], default=0.0)
    assert a == b, (path, a, b)
    return 0.0


def test_fsdp2_trainer_equals_ddp(runs):
    """Losses, weights, EMA, the checkpoint (in DDP's format) and the export equal DDP's within 1e-5."""
    directory, r = runs
    ddp, fsdp2 = r["ddp"], r["fsdp2"]
    assert fsdp2["sharded"] and not ddp["sharded"] and fsdp2["max_param_diff"] == 0.0
    assert len(fsdp2["losses"]) == STEPS
    _assert_close_runs(fsdp2, ddp)
    a = torch.load(directory / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(directory / "fsdp2" / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "ema"} <= a.keys() and a.keys() == b.keys()
    for part in ("model", "optimizer", "ema", "step", "data", "history"):
        assert _same_format(b[part], a[part], part) <= 1e-5, part
    exported = load_file(directory / "fsdp2" / "model.safetensors")
    reference = load_file(directory / "ddp" / "model.safetensors")
    assert {k: v.dtype for k, v in exported.items()} == {k: v.dtype for k, v in reference.items()}
    assert _max_diff(exported, reference) <= 1e-5


def test_fsdp2_resume_is_bit_identical_and_resumes_under_ddp(runs, toy_shards, tmp_path):
    """fsdp2: 2 steps, then a relaunch resumes to 4: bit-identical to the uninterrupted fsdp2 run. The
    same step-2 checkpoint resumed under DDP (train.data_parallel changed) equals it within 1e-5."""
    _, r = runs
    cut = tmp_path / "cut"
    first = _train(toy_shards, tmp_path, "first", 2, FSDP2, run_dir=cut)
    shutil.copytree(cut, tmp_path / "cross")
    rest = _train(toy_shards, tmp_path, "rest", STEPS, FSDP2, run_dir=cut)
    assert first["losses"] == r["fsdp2"]["losses"][:2] and rest["steps_run"] == 2
    assert rest["losses"] == r["fsdp2"]["losses"]
    for part in ("model", "ema"):
        assert all(torch.equal(v, r["fsdp2"]["weights"][part][k]) for k, v in rest["weights"][part].items()), part
    cross = _train(toy_shards, tmp_path, "ddp_from_fsdp2", STEPS, run_dir=tmp_path / "cross")
    assert not cross["sharded"] and cross["steps_run"] == 2
    _assert_close_runs(cross, r["fsdp2"])


def test_fsdp2_lora_equals_ddp_through_a_resume(toy_shards, tmp_path):
    """LoRA (rank 4, frozen base): fsdp2 for 2 steps, resumed to 3, equals 3 DDP steps; checkpoint and export
    hold the adapters only, as under DDP."""
    lora = "train.lora_rank=4"
    ddp = _train(toy_shards, tmp_path, "ddp", 3, lora)
    _train(toy_shards, tmp_path, "first", 2, lora, FSDP2, run_dir=tmp_path / "fsdp2")
    fsdp2 = _train(toy_shards, tmp_path, "rest", 3, lora, FSDP2, run_dir=tmp_path / "fsdp2")
    assert fsdp2["sharded"] and fsdp2["steps_run"] == 1
    _assert_close_runs(fsdp2, ddp)
    a = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "fsdp2" / "checkpoints" / "last.pt", weights_only=True)
    assert all(".lora_" in k for k in b["model"]) and len(b["model"]) == len(b["ema"]["shadow"])
    assert _same_format(b["model"], a["model"]) <= 1e-5 and _same_format(b["optimizer"], a["optimizer"]) <= 1e-5
    exported = load_file(tmp_path / "fsdp2" / "model.safetensors")
    assert _max_diff(exported, load_file(tmp_path / "ddp" / "model.safetensors")) <= 1e-5


def test_fsdp2_bf16_parameters(runs, toy_shards, tmp_path):
    """fsdp_param_dtype = "bf16" on gloo: parameters gathered and computed in bf16 (gradients reduced in
    fp32): the losses move off the fp32 ones by bf16 rounding, not more."""
    _, r = runs
    bf16 = _train(toy_shards, tmp_path, "bf16", 2, FSDP2, "train.fsdp_param_dtype=bf16")
    assert bf16["losses"] != r["fsdp2"]["losses"][:2]  # (step 1 is equal: the DiT's head starts at zero)
    for a, b in zip(bf16["losses"], r["fsdp2"]["losses"][:2]):
        assert abs(a - b) <= 3e-2 * abs(b), (bf16["losses"], r["fsdp2"]["losses"])
    assert all(v.dtype == torch.float32 for v in bf16["weights"]["model"].values())  # fp32 master weights


def test_fsdp2_divergence_on_one_rank_stops_every_rank(toy_shards, tmp_path):
    """A NaN in one rank's shard only: every rank raises at the next save (the verdict is summed over ranks),
    none hangs in the gather, and last.pt stays the step before."""
    out = tmp_path / "nan.json"
    _torchrun([str(HERE / "ddp_worker.py"), toy_shards, str(out), str(PER_RANK), str(ACCUM), "4",
               f"run_dir={tmp_path / 'run'}", "nan_at=2", FSDP2])
    for rank in (0, 1):
        message = Path(f"{out}.rank{rank}.err").read_text()
        assert message.startswith("training diverged by step 2:"), message
    assert "tensor shards on other ranks" in Path(f"{out}.rank0.err").read_text()  # rank 0's own shards are finite
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] == 1


# ---- configuration -----------------------------------------------------------------------------------


def _train_config(**train):
    from longlive.structure import structure
    from longlive.train.config import TrainConfig

    return structure({"data": "x.tar", **train}, TrainConfig, where="train")


def test_data_parallel_keys_are_validated():
    assert _train_config().data_parallel == "ddp"
    with pytest.raises(ConfigError, match="data_parallel.*fsdp2"):
        _train_config(data_parallel="fsdp")
    with pytest.raises(ConfigError, match=r"train.fsdp_param_dtype: 'bf16' applies to train.data_parallel = \"fsdp2\""):
        _train_config(fsdp_param_dtype="bf16")
    with pytest.raises(ConfigError, match="train.fsdp_shard"):
        _train_config(fsdp_shard="dp")
    with pytest.raises(ConfigError, match="fsdp_shard"):
        _train_config(data_parallel="fsdp2", fsdp_shard="sp")


def test_what_fsdp2_refuses_is_one_line():
    from longlive.parallel import ParallelMesh
    from longlive.train.sharding import check_fsdp2, fsdp_param_dtype

    run = SimpleNamespace(mesh=ParallelMesh(world=2), experiment=SimpleNamespace(quant=SimpleNamespace(generator="none")),
                          device=torch.device("cpu"), dtype=torch.bfloat16)
    with pytest.raises(ConfigError, match="train.eval_every = 5 .* set train.eval_every = 0"):
        check_fsdp2(_train_config(data_parallel="fsdp2", eval_every=5), run)
    run.experiment.quant.generator = "fouroversix"
    with pytest.raises(ConfigError, match="quant.generator = 'fouroversix'"):
        check_fsdp2(_train_config(data_parallel="fsdp2"), run)
    assert fsdp_param_dtype(_train_config(data_parallel="fsdp2"), run) is None  # auto on the CPU: fp32
    run.device = torch.device("cuda")
    assert fsdp_param_dtype(_train_config(data_parallel="fsdp2"), run) == torch.bfloat16


def test_dmd_refuses_fsdp2(toy_shards):
    from longlive.config import experiment_from_table
    from longlive.run import make_run
    from toy_setup import dmd_table

    table = dmd_table(toy_shards, "start.safetensors", steps=2)
    table["train"]["data_parallel"] = "fsdp2"
    with pytest.raises(ConfigError, match="train.data_parallel = 'fsdp2' with plugins.dmd.*set train.data_parallel"):
        make_run(experiment_from_table(table), run_dir=None, create_dir=False)


def test_fsdp2_with_one_process_trains_unwrapped(toy_shards):
    """One process: nothing to shard; the run equals the ddp (unwrapped) one bit for bit."""
    from longlive.train.trainer import run_training
    from toy_setup import make_toy_run, toy_table

    results = [run_training(make_toy_run(toy_table(toy_shards, steps=2, data_parallel=dp), None))["losses"]
               for dp in ("ddp", "fsdp2")]
    assert results[0] == results[1]
