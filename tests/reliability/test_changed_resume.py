"""Item 8: a resume compares the experiment with the one the checkpoint was trained under; a
change that breaks exact resume is an error naming the keys (exit 2, checkpoint and record
untouched); --allow-changed-resume continues and keeps both experiments."""
from __future__ import annotations

import torch

from fault_helpers import cli, write_experiment
from longlive.config import tomllib
from toy_setup import toy_table


def _record(path) -> dict:
    return tomllib.loads(path.read_text())


def test_changed_resume_is_refused_unless_allowed(toy_shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    exp = write_experiment(tmp_path, toy_table(toy_shards, steps=4, save_every=2, ema_decay=0.9))
    assert cli("run", exp, "--run-dir", run_dir) == 0
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    capsys.readouterr()

    assert cli("run", exp, "--run-dir", run_dir, "--set", "train.lr=0.002", "--set", "run.seed=4",
               "--set", "train.steps=6") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "run.seed 3 -> 4" in err[0] and "train.lr 0.001 -> 0.002" in err[0]
    assert "train.steps" not in err[0] and "--allow-changed-resume" in err[0]
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before  # nothing lost
    assert _record(run_dir / "experiment.toml")["train"]["lr"] == 0.001  # the record still tells what ran

    # keys that do not break exact resume may change
    assert cli("run", exp, "--run-dir", run_dir, "--set", "train.steps=6", "--set", "train.log_every=2") == 0
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 6

    # the explicit flag: continues, and both experiments are kept
    assert cli("run", exp, "--run-dir", run_dir, "--set", "train.steps=8", "--set", "train.lr=0.002",
               "--allow-changed-resume") == 0
    assert _record(run_dir / "experiment.step-6.toml")["train"]["lr"] == 0.001
    assert _record(run_dir / "experiment.toml")["train"]["lr"] == 0.002
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 8


def test_a_train_key_added_after_the_checkpoint_is_no_change_at_its_default():
    """A checkpoint written before train.fsdp_param_dtype existed resumes when the key holds its default;
    any other value, or a key outside [train] that is absent, is still a change."""
    from longlive.train.resume import breaking_changes

    saved = 'run.seed = 3\n[train]\nlr = 0.001\n'
    current = {"run": {"seed": 3}, "train": {"lr": 0.001, "fsdp_param_dtype": "auto", "data_parallel": "fsdp2"}}
    assert breaking_changes(saved, current) == []  # data_parallel: resume-safe; fsdp_param_dtype: its default
    current["train"]["fsdp_param_dtype"] = "bf16"
    assert breaking_changes(saved, current) == [("train.fsdp_param_dtype", None, "bf16")]
    assert breaking_changes(saved, {"run": {"seed": 3, "threads": 1}, "train": {"lr": 0.001}}) == [
        ("run.threads", None, 1)]
