"""Halo VAE encoding (Balanced SP): error of a rank's latents against the whole-video encode, and
the per-rank encode cost, as a function of the halo (plugins/sp_balanced/halo.py).

    OMP_NUM_THREADS=1 python benchmarks/sp_halo_vae.py --preset debug --latents 16 --sp 4 --size 32
    OMP_NUM_THREADS=1 python benchmarks/sp_halo_vae.py --preset wan2.2-vae --latents 16 --sp 4 --size 32

Random weights (seed 0; no checkpoint is read), random pixels in [-1, 1]. For each halo: the
relative error ||z_rank - z_whole|| / ||z_whole[rank's latents]|| of every rank (rank 0 is always
exact: it starts at pixel 0), the latents each rank encodes, and the wall time of the slowest
rank's encode over the whole-video encode. Prints a markdown table (docs/parallel.md).
"""
from __future__ import annotations

import argparse
import time

import torch

from longlive.model.vae import VAE_PRESETS, WanVAE
from longlive_plugins.sp_balanced.halo import encode_with_halo, halo_window


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="debug", choices=sorted(VAE_PRESETS))
    parser.add_argument("--latents", type=int, default=16)
    parser.add_argument("--sp", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, help="pixel height = width")
    parser.add_argument("--halos", default="0,1,2,4,8")
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = WanVAE(VAE_PRESETS[args.preset]).eval()
    stride = vae.config.temporal_stride
    video = torch.rand(1, 3, 1 + stride * (args.latents - 1), args.size, args.size,
                       generator=torch.Generator().manual_seed(1)) * 2 - 1
    whole, whole_s = _timed(lambda: vae.encode(video))
    per = args.latents // args.sp
    print(f"{args.preset}, {args.latents} latents ({video.shape[2]} frames) at {args.size}x{args.size}, sp {args.sp}: "
          f"whole-video encode {whole_s:.2f} s on one process")
    print("| halo (latents) | relative error per rank | latents encoded per rank | slowest rank time / whole |")
    print("|---|---|---|---|")
    for halo in [int(h) for h in args.halos.split(",")]:
        errors, encoded, seconds = [], [], []
        for r in range(args.sp):
            start, end = r * per, (r + 1) * per
            part, s = _timed(lambda: encode_with_halo(vae, video, start, end, halo, stride))
            ref = whole[:, :, start:end]
            errors.append(float((part - ref).norm() / ref.norm()))
            encoded.append(halo_window(start, end, halo, stride).encoded_latents)
            seconds.append(s)
        print(f"| {halo} | {', '.join(f'{e:.1e}' for e in errors)} | {', '.join(map(str, encoded))} "
              f"| {max(seconds) / whole_s:.2f} |")


if __name__ == "__main__":
    main()
