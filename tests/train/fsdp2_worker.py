"""torchrun entry of test_fsdp2.py: FSDP2 training steps of the DiT equal the non-sharded run.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=N fsdp2_worker.py OUT.json SP [lora]
With "lora": rank-4 LoRA adapters on every block linear, the base frozen (LongLive's LoRA training).
The (dp = N/SP, sp = SP) mesh of the core; FSDP2 over dp (HSDP, replicating over sp, if SP > 1 with
the sp_balanced Balanced layout). Every step, the global batch holds dp samples; the SP group of dp
rank d trains on sample d; the reference (every rank, not sharded) trains on all of them at once.
Rank 0 writes OUT.json: {"losses": [...], "losses_ref": [...], "max_param_diff": float, "max_grad_diff"
(first step), "max_grad",
"sharded_numel": local elements of a block norm weight, "full_numel": its full elements}.
"""
from __future__ import annotations

import json
import sys

import torch

STEPS, FRAMES, FPC, HW = 3, 4, 2, 4


def _model(lora: bool = False):
    from longlive.lora import attach
    from longlive.model.dit import WanDiT
    from longlive.model.presets import dit_preset

    torch.manual_seed(0)
    model = WanDiT(dit_preset("small"), attention="sdpa")
    if lora:
        attach(model, rank=4, alpha=4.0)  # freezes each wrapped base linear
        model.requires_grad_(False)
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
    with torch.no_grad():
        for p in model.parameters():  # lora_B too: non-zero adapters, every adapter gradient non-trivial
            p.add_(0.05 * torch.randn_like(p))
    return model.float().train()


def _batch(step: int, samples: int) -> dict:
    from longlive.model.presets import dit_preset

    cfg = dit_preset("small")
    g = torch.Generator().manual_seed(50 + step)
    return {"latents": torch.randn(samples, cfg.in_channels, FRAMES, HW, HW, generator=g),
            "context": torch.randn(samples, FRAMES // FPC, cfg.text_len, cfg.text_dim, generator=g),
            "seeds": torch.arange(samples) + 10 * step}


def main(out: str, sp: int, lora: bool = False) -> None:
    from longlive.distributed import build_mesh, close_mesh
    from longlive.train.objective import FlowMatchingObjective
    from longlive.train.sharding import full_state_dict, shard_dit

    torch.set_num_threads(1)
    mesh, _ = build_mesh(sp, torch.device("cpu"))
    try:
        layout = None
        if sp > 1:
            from longlive_plugins.sp_balanced.teacher import TeacherForcingUlysses

            layout = TeacherForcingUlysses(mesh, training_layout="balanced")
        make = lambda lay: FlowMatchingObjective(mode="teacher_forcing", frames_per_chunk=FPC, shift=5.0,  # noqa: E731
                                                 weighting="uniform", layout=lay)
        ref, sharded = _model(lora), _model(lora)
        shard_dit(sharded, mesh, shard="dp")  # HSDP when SP > 1 (the trainer tests shard over the world)
        # eps 1e-6: AdamW on gradients ~1e-8 would magnify their 1e-9 summation-order differences
        opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3, eps=1e-6)
                for m in (ref, sharded)]
        losses, losses_ref = [], []
        for step in range(STEPS):
            batch = _batch(step, mesh.dp)
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss, _ = make(None)(ref, batch, torch.Generator())
            loss.backward()
            opts[0].step()
            losses_ref.append(float(loss))
            mine = {k: v[mesh.dp_rank:mesh.dp_rank + 1] for k, v in batch.items()}  # this SP group's sample
            loss, metrics = make(layout)(sharded, mine, torch.Generator())
            (loss * mesh.sp).backward()  # FSDP averages over dp x sp; the SP shares sum
            if step == 0:  # the gradients of the first step, gathered from the shards
                pairs = [(p, r) for p, r in zip(sharded.parameters(), ref.parameters()) if r.requires_grad]
                grad_diff = max(float((p.grad.full_tensor() - r.grad).abs().max()) for p, r in pairs)
                grad_max = max(float(r.grad.abs().max()) for _, r in pairs)
                trained = len(pairs)
            opts[1].step()
            total = metrics["loss"].clone()
            torch.distributed.all_reduce(total, group=mesh.group("dp"))  # the global batch's mean loss
            losses.append(float(total) / mesh.dp)
        full = full_state_dict(sharded)
        diff = max(float((full[k] - v.detach()).abs().max()) for k, v in ref.state_dict().items())
        q = sharded.blocks[0].norm3.weight  # [dim]: dim 0 splits evenly
        if mesh.rank == 0:
            with open(out, "w") as f:
                json.dump({"losses": losses, "losses_ref": losses_ref, "max_param_diff": diff,
                           "max_grad_diff": grad_diff, "max_grad": grad_max, "trained_tensors": trained,
                           "sharded_numel": q.to_local().numel(), "full_numel": q.numel(),
                           "mesh": mesh.describe()}, f)
    finally:
        close_mesh(mesh)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), "lora" in sys.argv[3:])
