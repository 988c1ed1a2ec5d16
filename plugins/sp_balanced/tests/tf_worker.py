"""torchrun entry of test_teacher.py: teacher-forcing loss, gradients and optimizer steps under SP
against one device, for the balanced and the naive training layout.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=N tf_worker.py OUT.json LAYOUT...
(LAYOUT: balanced | naive, optionally +ckpt: the SP model checkpoints its blocks' activations)
Every rank builds the same `small` DiT (fp32, sdpa, CPU) and the same batch; rank 0 writes OUT.json:
    {layout: {"loss_ref", "loss_sp", "max_grad_diff", "max_grad_ref", "grads_compared",
              "loss_tokens_per_rank": [...], "tokens_per_rank": [...], "max_param_diff_after_steps",
              "finite": bool}}
The reference runs the single-device objective on every rank (same model, same inputs); the SP
gradients are the ranks' gradients summed over the group (what the trainer's DDP does).
"""
from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist

FRAMES, FPC, HW, BATCH, STEPS = 8, 2, 4, 2, 3


def _model():
    from longlive.model.dit import WanDiT
    from longlive.model.presets import dit_preset

    torch.manual_seed(0)
    model = WanDiT(dit_preset("small"), attention="sdpa")
    with torch.no_grad():
        for p in model.parameters():  # off the zero-initialised head: every gradient non-trivial
            p.add_(0.05 * torch.randn_like(p))
    return model.float().train()


def _batch(step: int) -> dict:
    cfg = __import__("longlive.model.presets", fromlist=["dit_preset"]).dit_preset("small")
    g = torch.Generator().manual_seed(100 + step)
    context = torch.randn(BATCH, FRAMES // FPC, cfg.text_len, cfg.text_dim, generator=g)
    context[:, 1] = context[:, 0]  # a repeated prompt: chunk 1 does not start a caption
    return {"latents": torch.randn(BATCH, cfg.in_channels, FRAMES, HW, HW, generator=g), "context": context,
            "seeds": torch.tensor([7 + step, 11 + step])}


def _objective(layout):
    from longlive.train.objective import FlowMatchingObjective

    return FlowMatchingObjective(mode="teacher_forcing", frames_per_chunk=FPC, shift=5.0, weighting="gaussian",
                                 caption_start_weight=2.0, layout=layout)


def _grads(model, objective, batch, group) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, metrics = objective(model, batch, torch.Generator())
    loss.backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]
    if group is not None:
        for g in grads:
            dist.all_reduce(g, group=group)
    return float(metrics["loss"]), grads


def compare(name: str, mesh) -> dict:
    """`name`: a training layout, "+ckpt" for activation checkpointing of the SP model's blocks."""
    from longlive_plugins.sp_balanced.teacher import TeacherForcingUlysses

    layout = TeacherForcingUlysses(mesh, training_layout=name.split("+")[0])
    ref_model, sp_model = _model(), _model()
    sp_model.checkpoint_blocks = name.endswith("+ckpt")
    ref_obj, sp_obj = _objective(None), _objective(layout)
    batch = _batch(0)
    loss_ref, grads_ref = _grads(ref_model, ref_obj, batch, None)
    loss_sp, grads_sp = _grads(sp_model, sp_obj, batch, layout.group)
    diffs = [float((a - b).abs().max()) for a, b in zip(grads_ref, grads_sp)]
    split = layout.teacher_split(FRAMES, FPC)
    tokens_per_frame = (HW // 2) ** 2
    counts = torch.tensor([split.loss_frames * tokens_per_frame * BATCH,
                           (split.clean_frames + split.noisy_frames) * tokens_per_frame * BATCH])
    gathered = [torch.zeros_like(counts) for _ in range(layout.sp)]
    dist.all_gather(gathered, counts, group=layout.group)
    # a few AdamW steps: the same weights
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (ref_model, sp_model)]
    for step in range(STEPS):
        batch = _batch(step + 1)
        for model, obj, opt, group in ((ref_model, ref_obj, opts[0], None), (sp_model, sp_obj, opts[1], layout.group)):
            _, grads = _grads(model, obj, batch, group)
            for p, g in zip(model.parameters(), grads):
                p.grad = g
            opt.step()
    param_diff = max(float((a - b).abs().max()) for a, b in zip(ref_model.parameters(), sp_model.parameters()))
    return {"loss_ref": loss_ref, "loss_sp": loss_sp, "max_grad_diff": max(diffs),
            "max_grad_ref": max(float(g.abs().max()) for g in grads_ref), "grads_compared": len(diffs),
            "nonzero_grads": sum(bool(g.abs().max() > 0) for g in grads_ref),
            "loss_tokens_per_rank": [int(c[0]) for c in gathered], "tokens_per_rank": [int(c[1]) for c in gathered],
            "max_param_diff_after_steps": param_diff,
            "finite": all(bool(torch.isfinite(g).all()) for g in grads_sp)}


def main(out: str, layouts: list[str]) -> None:
    from longlive.distributed import build_mesh, close_mesh

    torch.set_num_threads(1)
    mesh, _ = build_mesh(int(__import__("os").environ["WORLD_SIZE"]), torch.device("cpu"))
    try:
        results = {name: compare(name, mesh) for name in layouts}
        if mesh.rank == 0:
            with open(out, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        close_mesh(mesh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
