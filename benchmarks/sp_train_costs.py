"""Per-rank work of Balanced vs naive SP teacher forcing at a preset's geometry (computed, no torch run).

    python benchmarks/sp_train_costs.py                      # the 5B, 704x1280, 16 s (96 latents), sp 4
    python benchmarks/sp_train_costs.py --frames 384         # 64 s

Formulas: plugins/sp_balanced/costs.py. Prints a markdown table (docs/parallel.md).
"""
from __future__ import annotations

import argparse

from longlive.model.presets import dit_preset
from longlive_plugins.sp_balanced.costs import rank_costs
from longlive_plugins.sp_balanced.halo import halo_window
from longlive_plugins.sp_balanced.teacher import balanced_split, naive_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="wan2.2-ti2v-5b")
    p.add_argument("--height", type=int, default=704)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--frames", type=int, default=96, help="latent frames (96 = 16 s at 24 fps)")
    p.add_argument("--frames-per-chunk", type=int, default=8)
    p.add_argument("--sp", type=int, default=4)
    p.add_argument("--halo", type=int, default=28, help="halo latents of the balanced layout's VAE encode")
    args = p.parse_args()
    cfg = dit_preset(args.preset)
    tokens_per_frame = (args.height // 16 // cfg.patch[1]) * (args.width // 16 // cfg.patch[2])
    per = args.frames // args.sp
    geometry = dict(frames=args.frames, tokens_per_frame=tokens_per_frame, frames_per_block=args.frames_per_chunk,
                    layers=cfg.num_layers, dim=cfg.dim, ffn_dim=cfg.ffn_dim, heads=cfg.num_heads,
                    head_dim=cfg.head_dim, text_len=cfg.text_len, out_channels=cfg.out_channels * cfg.patch[0]
                    * cfg.patch[1] * cfg.patch[2])
    layouts = {
        "balanced": rank_costs([balanced_split(args.frames, args.sp, r) for r in range(args.sp)], **geometry,
                               vae_latents=[halo_window(r * per, (r + 1) * per, args.halo, 4).encoded_latents
                                            for r in range(args.sp)]),
        "naive": rank_costs([naive_split(args.frames, args.sp, r) for r in range(args.sp)], **geometry,
                            vae_latents=[args.frames] * args.sp),
    }
    print(f"{args.preset}, {args.height}x{args.width}, {args.frames} latent frames ({tokens_per_frame} tokens each), "
          f"chunks of {args.frames_per_chunk}, sp {args.sp}, halo {args.halo}; per rank, one sample, forward")
    print("| layout | rank | tokens | loss tokens | GEMM TFLOP | self-attn TFLOP | cross-attn TFLOP | head GFLOP "
          "| residual GiB (ckpt) | VAE latents encoded |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, costs in layouts.items():
        for c in costs:
            print(f"| {name} | {c.rank} | {c.tokens:,} | {c.loss_tokens:,} | {c.gemm_flops / 1e12:.1f} "
                  f"| {c.self_attention_flops / 1e12:.1f} | {c.cross_attention_flops / 1e12:.2f} "
                  f"| {c.head_flops / 1e9:.1f} | {c.residual_bytes / 2**30:.1f} | {c.vae_latents} |")


if __name__ == "__main__":
    main()
