"""torchrun entry of test_ddp.py: train the toy run on this rank, then compare parameters across ranks.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py SHARDS OUT.json BATCH ACCUM STEPS [DEVICE] [SP_LAYOUT] [RUN_DIR]
With SP_LAYOUT (balanced | naive) all ranks form one SP group (parallel.sp = N, the sp_balanced plugin).
With RUN_DIR the run checkpoints there every step (and resumes from a checkpoint it finds).
Rank 0 writes OUT.json: {"losses": [...], "max_param_diff": max |p_rank0 - p_rank1|, "world_size": N}.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

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


def main(shards: str, out: str, batch: int, accum: int, steps: int, device: str = "cpu",
         sp_layout: str | None = None, run_dir: str | None = None) -> None:
    from longlive.distributed import close_mesh, init_distributed, shutdown
    from longlive.train.config import train_config

    torch.set_num_threads(1)
    table = toy_table(shards, batch_size=batch, grad_accum=accum, steps=steps)
    table["run"]["device"] = device
    if sp_layout is not None:
        table["parallel"] = {"sp": int(os.environ["WORLD_SIZE"])}
        table["run"]["plugins"].append("sp_balanced")
        table["plugins"]["sp_balanced"] = {"training_layout": sp_layout}
    if run_dir is not None:
        table["train"]["save_every"] = 1
    run = make_toy_run(table, Path(run_dir) if run_dir is not None else None)
    run.task_config = train_config(run)
    info, run.device = init_distributed(run.device)
    try:
        trainer = _trainer_class()(run, run.task_config, info)
        result = trainer.fit()
        flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(info.world_size)]
        if info.distributed:
            dist.all_gather(gathered, flat)
        else:
            gathered = [flat]
        diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
        if info.is_main:
            with open(out, "w") as f:
                json.dump({"losses": result["losses"], "max_param_diff": diff, "world_size": info.world_size,
                           "layout": run.layout.name, "steps_run": trainer.steps_run}, f)
    finally:
        shutdown(info)
        close_mesh(run.mesh)  # make_run joined the process group (the core's device mesh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), *sys.argv[6:9])
