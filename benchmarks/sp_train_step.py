"""One teacher-forcing training step of the DiT under SP (Balanced or naive): s/iter, tokens/s, MFU, peak memory.

    torchrun --nproc_per_node=4 benchmarks/sp_train_step.py --layout balanced --out sp4_balanced.json   # 5B, 16 s
    torchrun --nproc_per_node=4 benchmarks/sp_train_step.py --layout naive --out sp4_naive.json
    torchrun --nproc_per_node=4 benchmarks/sp_train_step.py --sp 2 --data-parallel fsdp2 --out sp2_dp2_fsdp2.json

SP groups of --sp processes (default: all processes form one group), dp = processes / sp. Random
weights (init on the device), one random sample per step and dp group, identical on the ranks of a
group (latents [1, 48, F, H/16, W/16], one random prompt embedding per chunk): the DiT part of
LongLive 2.0's AR step (no VAE, no text encoder; the Balanced layout's halo VAE encode is measured
by benchmarks/sp_halo_vae.py). Per step: forward_teacher of the rank's part, loss share, backward
(blocks checkpointed unless --no-checkpoint), then by --data-parallel: "ddp" all-reduces the
replicated gradients over every rank (what the trainer's DDP does), "fsdp2" shards the DiT over
every rank (longlive/train/sharding.py, fsdp_shard "world"; BF16 parameters on CUDA, FP32
reduction) and its backward reduce-scatters them; AdamW (fused on CUDA) unless --no-optimizer.
FP32 master weights; on CUDA the forward runs under BF16 autocast (the trainer's rule). Peak memory
counts from after the model is built (and sharded).

Reported (rank 0, JSON and one line): seconds per step (mean of the measured steps, after warm-up),
tokens/s (the sample's 2 x F x T tokens per second, whole group), MFU = model FLOPs (3 x forward:
plugins/sp_balanced/costs.py, exact masked attention) / (time x processes x --peak-tflops), peak
memory allocated per rank (CUDA) and peak resident memory per process (ru_maxrss, any device). --device cpu --preset small --frames 8 --height 64 --width 64 runs the same
code on gloo (a dry run: numbers meaningless).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import attrs
import torch
import torch.distributed as dist


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layout", default="balanced", choices=("balanced", "naive"))
    p.add_argument("--sp", type=int, default=None, help="processes per SP group (default: all)")
    p.add_argument("--data-parallel", default="ddp", choices=("ddp", "fsdp2"))
    p.add_argument("--preset", default="wan2.2-ti2v-5b")
    p.add_argument("--dim", type=int, default=None, help="override the preset's width (ffn 4x, heads dim/64)")
    p.add_argument("--layers", type=int, default=None, help="override the preset's block count")
    p.add_argument("--height", type=int, default=704)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--frames", type=int, default=96, help="latent frames (96 = 16 s)")
    p.add_argument("--frames-per-chunk", type=int, default=8)
    p.add_argument("--device", default="cuda")
    p.add_argument("--attention", default="auto")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--no-checkpoint", action="store_true")
    p.add_argument("--no-optimizer", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense BF16 peak per device (H200 SXM: 989)")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from longlive.distributed import build_mesh, close_mesh
    from longlive.model.dit import WanDiT
    from longlive.model.presets import dit_preset
    from longlive.train.objective import FlowMatchingObjective
    from longlive_plugins.sp_balanced.costs import rank_costs
    from longlive_plugins.sp_balanced.teacher import TeacherForcingUlysses, balanced_split, naive_split

    world = int(os.environ.get("WORLD_SIZE", "1"))
    mesh, device = build_mesh(args.sp or world, torch.device(args.device))
    cuda = device.type == "cuda"
    try:
        cfg = dit_preset(args.preset)
        if args.dim is not None:
            cfg = attrs.evolve(cfg, name=f"{cfg.name}-dim{args.dim}", dim=args.dim, ffn_dim=4 * args.dim,
                               num_heads=args.dim // 64)
        if args.layers is not None:
            cfg = attrs.evolve(cfg, name=f"{cfg.name}-{args.layers}layers", num_layers=args.layers)
        torch.manual_seed(0)
        with torch.device(device):
            model = WanDiT(cfg, attention=args.attention).float().train()
        model.checkpoint_blocks = not args.no_checkpoint
        sharded = args.data_parallel == "fsdp2" and mesh.distributed
        if sharded:
            from longlive.train.sharding import shard_dit

            shard_dit(model, mesh, param_dtype=torch.bfloat16 if cuda else None, shard="world")
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        layout = TeacherForcingUlysses(mesh, training_layout=args.layout) if mesh.sp > 1 else None
        objective = FlowMatchingObjective(mode="teacher_forcing", frames_per_chunk=args.frames_per_chunk, shift=5.0,
                                          weighting="gaussian", layout=layout)
        params = list(model.parameters())
        optimizer = None if args.no_optimizer else torch.optim.AdamW(params, lr=1e-5, betas=(0.0, 0.999),
                                                                      fused=cuda or None)
        h, w = args.height // 16, args.width // 16
        chunks = args.frames // args.frames_per_chunk
        generator = torch.Generator(device=device)
        times = []
        for step in range(args.warmup + args.steps):
            g = torch.Generator(device=device).manual_seed(1000 + step + 100_000 * mesh.dp_rank)  # not a sample seed
            batch = {"latents": torch.randn(1, cfg.in_channels, args.frames, h, w, generator=g, device=device),
                     "context": torch.randn(1, chunks, cfg.text_len, cfg.text_dim, generator=g, device=device),
                     "seeds": torch.tensor([step])}
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                loss, metrics = objective(model, batch, generator)
            (loss * mesh.sp).backward()
            if mesh.distributed and not sharded:
                grads = [p.grad for p in params if p.grad is not None]
                works = [dist.all_reduce(g, op=dist.ReduceOp.AVG, async_op=True) for g in grads]
                for work in works:
                    work.wait()
            if optimizer is not None:
                optimizer.step()
            model.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            if mesh.rank == 0:
                print(f"step {step}: {times[-1]:.3f} s, loss {float(metrics['loss']):.4f}, mse {float(metrics['mse']):.4f}", flush=True)
        seconds = sum(times[args.warmup:]) / max(1, args.steps)
        tokens_per_frame = (h // cfg.patch[1]) * (w // cfg.patch[2])
        split = balanced_split if args.layout == "balanced" else naive_split
        costs = rank_costs([split(args.frames, mesh.sp, r) for r in range(mesh.sp)], frames=args.frames,
                           tokens_per_frame=tokens_per_frame, frames_per_block=args.frames_per_chunk,
                           layers=cfg.num_layers, dim=cfg.dim, ffn_dim=cfg.ffn_dim, heads=cfg.num_heads,
                           head_dim=cfg.head_dim, text_len=cfg.text_len,
                           out_channels=cfg.out_channels * cfg.patch[1] * cfg.patch[2], vae_latents=[0] * mesh.sp)
        model_flops = 3 * sum(c.forward_flops for c in costs) * mesh.dp
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
        peak = torch.tensor([torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0, rss], device=device)
        peaks = [torch.zeros_like(peak) for _ in range(mesh.world)]
        if mesh.distributed:
            dist.all_gather(peaks, peak)
        else:
            peaks = [peak]
        result = {"layout": args.layout, "preset": cfg.name, "parameters": sum(p.numel() for p in params),
                  "frames": args.frames, "height": args.height, "width": args.width, "processes": mesh.world,
                  "sp": mesh.sp, "dp": mesh.dp,
                  "data_parallel": args.data_parallel if mesh.distributed else "none", "device": str(device),
                  "checkpoint_blocks": model.checkpoint_blocks, "optimizer": optimizer is not None,
                  "seconds_per_step": seconds, "step_seconds": times,
                  "tokens_per_s": 2 * args.frames * tokens_per_frame * mesh.dp / seconds,
                  "model_tflop_per_step": model_flops / 1e12,
                  "mfu": model_flops / (seconds * mesh.world * args.peak_tflops * 1e12),
                  "peak_memory_gib_per_rank": [round(float(x[0]), 2) for x in peaks],
                  "peak_rss_gib_per_rank": [round(float(x[1]), 3) for x in peaks],
                  "loss_tokens_per_rank": [c.loss_tokens for c in costs]}
        if mesh.rank == 0:
            print(json.dumps(result), flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(result, f, indent=1)
    finally:
        close_mesh(mesh)


if __name__ == "__main__":
    main()
