"""Every installed quantization format's emulated path on the CPU against the same on a GPU.

For each format and for inference and training conversions: a linear with seeded random weights
and a seeded input are converted and run on the CPU and on the GPU, both with path "emulate", and
the outputs are compared (bit-exact or not, max |diff|, relative error). Where the format's probe
passes on the GPU, its real path is compared with its emulated path on the same GPU too.

    python benchmarks/quant_formats_devices.py --out docs/results/h200_quant_formats_devices.json
"""
from __future__ import annotations

import argparse
import copy
import json

import torch
from torch import nn

from longlive.quant.installed import installed_formats

IN, OUT, TOKENS = 1024, 512, 256  # multiples of every format's block size


def linear_and_input(seed: int) -> tuple[nn.Linear, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(IN, OUT)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(OUT, IN, generator=gen) * IN**-0.5)
        linear.bias.copy_(torch.randn(OUT, generator=gen))
    x = torch.randn(TOKENS, IN, generator=gen)
    x[:, :8] *= 20  # a few outlier channels
    return linear, x


def forward(fmt, linear: nn.Linear, x: torch.Tensor, *, device: str, path: str, training: bool,
            dtype: torch.dtype) -> torch.Tensor:
    module = fmt.convert(copy.deepcopy(linear).to(device, dtype), role="generator", training=training, path=path)
    with torch.no_grad(), fmt.forward_context():
        return module(x.to(device, dtype)).float().cpu()


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (a.double() - b.double())
    return {"bit_exact": bool(torch.equal(a, b)), "max_abs_diff": diff.abs().max().item(),
            "relative_error": (diff.norm() / b.double().norm()).item(), "nan": bool(a.isnan().any() or b.isnan().any())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    results = {"device_name": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
               "torch": torch.__version__, "shape": {"tokens": TOKENS, "in": IN, "out": OUT}, "formats": {}}
    for name, fmt in sorted(installed_formats().items()):
        rows = {}
        for training in (False, True):
            for dtype in (torch.float32, torch.bfloat16):
                key = f"{'train' if training else 'infer'}_{str(dtype).removeprefix('torch.')}"
                cases = []
                for seed in range(args.seeds):
                    linear, x = linear_and_input(seed)
                    cpu = forward(fmt, linear, x, device="cpu", path="emulate", training=training, dtype=dtype)
                    gpu = forward(fmt, linear, x, device=args.device, path="emulate", training=training, dtype=dtype)
                    case = {"emulated_cpu_vs_gpu": compare(gpu, cpu)}
                    if fmt.probe(torch.device(args.device))[0] and not training:
                        real = forward(fmt, linear, x, device=args.device, path="real", training=False, dtype=dtype)
                        case["real_vs_emulated_gpu"] = compare(real, gpu)
                    cases.append(case)
                rows[key] = cases
                line = ", ".join(f"{k}: {'exact' if all(c[k]['bit_exact'] for c in cases) else 'max rel %.2e' % max(c[k]['relative_error'] for c in cases)}"
                                 for k in cases[0])
                print(f"{name:14s} {key:14s} {line}", flush=True)
        results["formats"][name] = rows
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
