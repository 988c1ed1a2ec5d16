"""Bytes the Ulysses SP collectives move per chunk and the KV cache per rank, at a preset's geometry.

Arithmetic from the shapes (plugins/sp_balanced/traffic.py, the same count the run logs per chunk):
    python benchmarks/sp_traffic.py                       # the 5B at 704x1280, BF16, 4 steps
    python benchmarks/sp_traffic.py --steps 2 --guidance 3
    python benchmarks/sp_traffic.py --kv-exchange fp8       # K and V sent as FP8 E4M3 + scales
"""
from __future__ import annotations

import argparse

from longlive.geometry import Geometry
from longlive.model.presets import dit_preset
from longlive.model.vae_presets import VAE_PRESETS
from longlive_plugins.sp_balanced.traffic import chunk_traffic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="wan2.2-ti2v-5b")
    p.add_argument("--height", type=int, default=704)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--frames-per-chunk", type=int, default=8)
    p.add_argument("--window-frames", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--bytes", type=int, default=2, help="bytes per activation element (2: BF16)")
    p.add_argument("--kv-exchange", default="activation", choices=("activation", "fp8"))
    args = p.parse_args()
    preset, vae = dit_preset(args.preset), VAE_PRESETS["wan2.2-vae"]
    geo = Geometry(height=args.height, width=args.width, temporal_stride=vae.temporal_stride,
                   spatial_stride=vae.spatial_stride, patch_h=preset.patch[1], patch_w=preset.patch[2],
                   frames_per_chunk=args.frames_per_chunk)
    cfg = args.guidance != 1.0
    rows = args.batch * (2 if cfg else 1)
    kv_bytes = 2 * preset.num_layers * rows * geo.tokens(args.window_frames) * preset.dim * args.bytes
    print(f"{preset.name} at {args.width}x{args.height}: {geo.chunk_tokens} tokens a chunk, {preset.num_heads} heads, "
          f"{args.steps} steps + 1 context pass, batch {args.batch}{' x2 (CFG)' if cfg else ''}, "
          f"{args.bytes}-byte activations, K/V exchanged as {args.kv_exchange}")
    print(f"{'sp':>3} {'tokens/rank':>11} {'heads/rank':>10} {'KV cache/rank GB':>16} {'Q,K,V a2a GB':>12} "
          f"{'out a2a GB':>10} {'gather MB':>9} {'sent/rank GB':>12} {'group GB':>8} {'collectives':>11}")
    for sp in (1, 2, 4, 8):
        if preset.num_heads % sp or geo.chunk_tokens % sp:
            continue
        t = chunk_traffic(sp=sp, num_layers=preset.num_layers, num_heads=preset.num_heads, head_dim=preset.head_dim,
                          chunk_tokens=geo.chunk_tokens, batch=args.batch, cfg=cfg, steps=args.steps,
                          head_channels=preset.patch_channels, element_bytes=args.bytes,
                          kv_exchange=args.kv_exchange)
        print(f"{sp:>3} {geo.chunk_tokens // sp:>11} {preset.num_heads // sp:>10} {kv_bytes / sp / 1e9:>16.3f} "
              f"{t.qkv_all_to_all / 1e9:>12.3f} {t.out_all_to_all / 1e9:>10.3f} {t.gather / 1e6:>9.2f} "
              f"{t.total / 1e9:>12.3f} {t.group_total / 1e9:>8.2f} {t.collectives:>11}")


if __name__ == "__main__":
    main()
