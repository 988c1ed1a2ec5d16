"""torchrun entry of test_ddp.py, test_sp_train.py and test_fsdp2.py: train the toy run on this rank, then
compare parameters across ranks.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=N ddp_worker.py SHARDS OUT.json BATCH ACCUM STEPS
       [device=cpu] [layout=balanced|naive] [sp=N] [run_dir=DIR] [weights=W.pt] [nan_at=STEP] [train.KEY=VALUE ...]
With `layout` the sp_balanced plugin splits each sample over `sp` ranks (default: all N ranks form one SP
group). With `run_dir` the run checkpoints there every step (and resumes from a checkpoint it finds).
`train.KEY=VALUE` sets a [train] key (an integer, true/false, or a string: train.data_parallel=fsdp2).
With `nan_at`, the last rank writes a NaN into its own part of the first parameter after that optimizer
step; each rank then writes the error that stopped it to OUT.json.rank<R>.err and exits normally.
Rank 0 writes OUT.json: {"losses": [...], "max_param_diff": max |p_rank0 - p_rank_r| of the whole
parameters, "world_size": N, "layout", "steps_run", "sharded"} and, with `weights`, the whole model state
and EMA shadow ({"model": ..., "ema": ...}) as W.pt.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from longlive.registry import hookimpl
from toy_setup import make_toy_run, toy_table


def _trainer_class():
    from longlive.train.trainer import Trainer

    class CountingTrainer(Trainer):
        """Counts the optimizer steps this launch ran (a resumed launch skips the checkpointed ones)."""

        steps_run = 0

        def train_step(self):
            self.steps_run += 1
            return super().train_step()

    return CountingTrainer


class _PoisonRank:
    """A test plugin: after optimizer step `step`, the last rank puts a NaN into its part of the first parameter."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def longlive_optimizer_step_done(self, model, step, run):
        if step == self.step and run.mesh.rank == run.mesh.world - 1:
            first = next(model.parameters())
            with torch.no_grad():
                (first.to_local() if hasattr(first, "to_local") else first).view(-1)[0] = float("nan")


def _table(shards: str, batch: int, accum: int, steps: int, options: dict[str, str]) -> dict:
    table = toy_table(shards, batch_size=batch, grad_accum=accum, steps=steps)
    table["run"]["device"] = options.get("device", "cpu")
    if "layout" in options:
        table["parallel"] = {"sp": int(options.get("sp", os.environ["WORLD_SIZE"]))}
        table["run"]["plugins"].append("sp_balanced")
        table["plugins"]["sp_balanced"] = {"training_layout": options["layout"]}
    if "run_dir" in options:
        table["train"]["save_every"] = 1
    for key, value in options.items():
        if key.startswith("train."):
            parsed = {"true": True, "false": False}.get(value, int(value) if value.isdigit() else value)
            table["train"][key.removeprefix("train.")] = parsed
    return table


def main(shards: str, out: str, batch: int, accum: int, steps: int, *pairs: str) -> None:
    from longlive.distributed import close_mesh, init_distributed, shutdown
    from longlive.errors import LongLiveError
    from longlive.train.config import train_config
    from longlive.train.sharding import gather_full

    torch.set_num_threads(1)
    options = dict(pair.split("=", 1) for pair in pairs)
    run_dir = Path(options["run_dir"]) if "run_dir" in options else None
    poison = [_PoisonRank(int(options["nan_at"]))] if "nan_at" in options else []
    run = make_toy_run(_table(shards, batch, accum, steps, options), run_dir, *poison)
    run.task_config = train_config(run)
    info, run.device = init_distributed(run.device)
    try:
        trainer = _trainer_class()(run, run.task_config, info)
        try:
            result = trainer.fit()
        except LongLiveError as e:
            if not poison:
                raise
            Path(f"{out}.rank{info.rank}.err").write_text(str(e))
            return
        network = trainer.algorithm.networks["generator"]
        whole = {"model": gather_full(network.model.state_dict(), keep=True),
                 "ema": gather_full(network.ema.shadow, keep=True)}
        flat = torch.cat([v.detach().flatten().float() for v in whole["model"].values()])
        gathered = [torch.empty_like(flat) for _ in range(info.world_size)]
        if info.distributed:
            dist.all_gather(gathered, flat)
        else:
            gathered = [flat]
        diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
        if info.is_main:
            with open(out, "w") as f:
                json.dump({"losses": result["losses"], "max_param_diff": diff, "world_size": info.world_size,
                           "layout": run.layout.name, "steps_run": trainer.steps_run,
                           "sharded": network.sharded, "mesh": run.mesh.describe()}, f)
            if "weights" in options:
                torch.save(whole, options["weights"])
    finally:
        shutdown(info)
        close_mesh(run.mesh)  # make_run joined the process group (the core's device mesh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), *sys.argv[6:])
