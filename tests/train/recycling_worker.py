"""torchrun entry of test_recipe.py: the toy run with I2V and error recycling on this rank.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=2 recycling_worker.py SHARDS OUT.pt BATCH STEPS
Rank 0 writes OUT.pt: {"losses": [...], "buffers": rank 0's error buffers, "max_buffer_diff": max |rank0 - rank1|}.
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from toy_setup import make_toy_run, recipe_table


def main(shards: str, out: str, batch: int, steps: int) -> None:
    from longlive.distributed import close_mesh, init_distributed, shutdown
    from longlive.train.config import train_config
    from longlive.train.trainer import Trainer

    torch.set_num_threads(1)
    run = make_toy_run(recipe_table(shards, batch_size=batch, steps=steps), None)
    run.task_config = train_config(run)
    info, run.device = init_distributed(run.device)
    try:
        trainer = Trainer(run, run.task_config, info)
        result = trainer.fit()
        buffers = trainer.algorithm.recycling.state_dict()
        flat = torch.cat([buffers["ring_x0"].flatten(), buffers["ring_noise"].flatten(),
                          buffers["count"].double(), buffers["pointer"].double()]).double()
        gathered = [torch.empty_like(flat) for _ in range(info.world_size)]
        dist.all_gather(gathered, flat)
        diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
        if info.is_main:
            torch.save({"losses": result["losses"], "buffers": buffers, "max_buffer_diff": diff}, out)
    finally:
        shutdown(info)
        close_mesh(run.mesh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
