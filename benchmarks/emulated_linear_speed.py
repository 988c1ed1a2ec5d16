"""Milliseconds per emulated W4A4 linear forward on the CPU, before and after the emulation's fast paths.

At the shipped toy model's shapes (256 tokens a chunk; dim 320, FFN 1280), one thread:
- fp32: the unquantized GEMM x @ W^T, the floor;
- fouroversix, reference: quantize x with fouroversix's PyTorch path, then its emulated GEMM
  (dequantizes both operands every call) - what quant_4o6 ran before;
- fouroversix, fast: `backend.fake_quantize(x) @ dequantize(Q(W))^T` with the dequantized weight
  kept (what NVFP4Linear's emulated forward runs now; equal bit for bit, tests/test_backend.py);
- TE recipe: the core reference's `emulated_gemm` with and without the weight's block values kept;
- MXFP4 (example package): with the weight dequantized in every call, and kept.

    python benchmarks/emulated_linear_speed.py [--repeats 50]
"""
from __future__ import annotations

import argparse
import time

import torch

from longlive.quant import nvfp4
from longlive_plugins.quant_4o6 import backend
from longlive_quant_mxfp4 import mxfp4

SHAPES = [(256, 320, 320), (256, 320, 1280), (256, 1280, 320)]  # tokens, in, out


def milliseconds(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, 1 thread, ms per forward (ratio to fp32)")
    print("| tokens x in -> out | fp32 | fouroversix static_6 ref / fast | fouroversix mse ref / fast "
          "| TE recipe ref / kept | MXFP4 ref / kept |")
    print("|---|---|---|---|---|---|")
    for m, k, n in SHAPES:
        x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        row = [f"{m} x {k} -> {n}"]
        fp32 = milliseconds(lambda: x @ w.t(), args.repeats)
        row.append(f"{fp32:.2f}")

        def pair(ref, fast) -> str:
            a, b = milliseconds(ref, args.repeats), milliseconds(fast, args.repeats)
            return f"{a:.2f} ({a / fp32:.1f}x) / {b:.2f} ({b / fp32:.1f}x)"

        for rule in ("static_6", "mse"):
            q_w = backend.quantize(w, rule=rule, path="emulate")
            w_hat = backend.dequantize(q_w)
            row.append(pair(lambda: backend.matmul(backend.quantize(x, rule=rule, path="emulate"), q_w, path="emulate"),
                            lambda: backend.fake_quantize(x, rule=rule) @ w_hat.t()))
        te_w = nvfp4.quantize(w, scale_rule="static_6", block_2d=True, op_order="te")
        te_values = nvfp4.block_values(te_w)
        te_x = dict(scale_rule="static_6", op_order="te")
        row.append(pair(lambda: nvfp4.emulated_gemm(nvfp4.quantize(x, **te_x), te_w, torch.float32),
                        lambda: nvfp4.emulated_gemm(nvfp4.quantize(x, **te_x), te_w, torch.float32, b_values=te_values)))
        packed, scales = mxfp4.quantize(w)
        mx_w = mxfp4.dequantize(packed, scales)
        row.append(pair(lambda: mxfp4.fake_quantize(x) @ mxfp4.dequantize(packed, scales).t(),
                        lambda: mxfp4.fake_quantize(x) @ mx_w.t()))
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
