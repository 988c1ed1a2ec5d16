"""fouroversix 1.0.5's Triton quantize against its PyTorch backend on the GPU at hand (issue 25, item 5).

fouroversix's auto-selection picks Triton on any CUDA GPU, Hopper included, where its fast paths
(Blackwell PTX) are replaced by "slow" fallbacks; our quant_4o6 plugin selects the PyTorch backend
explicitly for emulation. This script quantizes the same tensors with both backends on the GPU, for
every scale rule, and counts differing E2M1 codes, block scales and amax values.

    python benchmarks/fouroversix_backends.py --out fouroversix_backends.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from fouroversix import QuantizationConfig, QuantizeBackend, quantize_to_fp4

RULES = ("static_6", "static_4", "mse", "mae", "abs_max")


def _codes(q) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return q.values.view(torch.uint8).cpu(), q.scale_factors.view(torch.uint8).cpu(), q.amax.float().cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    cases = {"normal_1024x1024": torch.randn(1024, 1024, generator=g),
             "student_t3_512x2048": torch.distributions.StudentT(3.0).sample((512, 2048)),
             "outliers_256x4096": torch.randn(256, 4096, generator=g) * (1 + 50 * (torch.rand(256, 4096, generator=g) > 0.999))}
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "cases": {}}
    for name, x in cases.items():
        x = x.to(dev, torch.bfloat16)
        for rule in RULES:
            row = {}
            try:
                ref = quantize_to_fp4(x, QuantizationConfig(backend=QuantizeBackend.pytorch, scale_rule=rule))
                tri = quantize_to_fp4(x, QuantizationConfig(backend=QuantizeBackend.triton, scale_rule=rule))
                (rv, rs, ra), (tv, ts, ta) = _codes(ref), _codes(tri)
                row = {"values_differ": int((rv != tv).sum()) if rv.shape == tv.shape else f"shape {tuple(tv.shape)}",
                       "values": rv.numel(),
                       "scales_differ": int((rs != ts).sum()) if rs.shape == ts.shape else f"shape {tuple(ts.shape)}",
                       "scales": rs.numel(), "amax_equal": bool(torch.equal(ra, ta))}
            except Exception as e:  # a backend that cannot run here is a result too
                row = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            result["cases"][f"{name}/{rule}"] = row
            print(name, rule, row, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
