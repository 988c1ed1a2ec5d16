"""torchrun entry of test_dmd.py: DMD on this rank, then compare both networks' parameters across ranks.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=2 dmd_ddp_worker.py SHARDS START OUT.json STEPS
Rank 0 writes OUT.json: {"losses": [...], "max_param_diff": max |p_rank0 - p_rank1| over generator and critic}.
"""
from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from toy_setup import dmd_table, make_toy_run


def main(shards: str, start: str, out: str, steps: int) -> None:
    from longlive.distributed import close_mesh, init_distributed, shutdown
    from longlive.train.config import train_config
    from longlive.train.trainer import Trainer

    torch.set_num_threads(1)
    run = make_toy_run(dmd_table(shards, start, steps=steps), None)
    run.task_config = train_config(run)
    info, run.device = init_distributed(run.device)
    try:
        trainer = Trainer(run, run.task_config, info)
        result = trainer.fit()
        flat = torch.cat([p.detach().flatten() for net in trainer.algorithm.networks.values() for p in net.params])
        gathered = [torch.empty_like(flat) for _ in range(info.world_size)]
        dist.all_gather(gathered, flat)
        diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
        if info.is_main:
            with open(out, "w") as f:
                json.dump({"losses": result["losses"], "max_param_diff": diff, "world_size": info.world_size,
                           "params": flat.tolist()}, f)
    finally:
        shutdown(info)
        close_mesh(run.mesh)  # make_run joined the process group: leaving it open can abort the exit (gloo)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
