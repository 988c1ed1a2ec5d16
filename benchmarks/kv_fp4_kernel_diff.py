"""Where the compiled kv_fp4 kernels differ from the PyTorch reference on a GPU: per dtype and rule,
the count and size of differing dequantized elements (the GPU test asserts bit equality)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longlive_plugins.kv_fp4 import reference  # noqa: E402
from longlive_plugins.kv_fp4.backend import select_backend  # noqa: E402


def main() -> None:
    dev = torch.device("cuda")
    backend = select_backend(dev)
    g = torch.Generator().manual_seed(0)
    out = {}
    for rule in ("static_6", "mse"):
        slots, batch, tokens, heads, d = 3, 2, 880, 6, 128
        xs = [(torch.randn(batch, tokens, heads, d, generator=g)
               * torch.exp(2 * torch.randn(batch, tokens, heads, 1, generator=g))).bfloat16() for _ in range(slots)]
        values = torch.empty(slots, batch, tokens, heads, d // 2, dtype=torch.uint8, device=dev)
        scales = torch.empty(slots, batch, tokens, heads, d // 16, dtype=torch.uint8, device=dev)
        amax = torch.stack([x.float().abs().amax() for x in xs]).to(dev)
        for s, x in enumerate(xs):
            backend.quantize_chunk(x.to(dev), amax[s], scale_rule=rule, values_out=values[s], scales_out=scales[s])
        slot_list = torch.tensor([2, 0, 1], device=dev)
        for out_dtype in (torch.bfloat16, torch.float32):
            got = backend.dequantize_slots(values, scales, amax, slot_list, scale_rule=rule, out_dtype=out_dtype).cpu()
            ref_cpu = reference.dequantize_slots_reference(values.cpu(), scales.cpu(), amax.cpu(), slot_list.cpu(),
                                                           scale_rule=rule, out_dtype=out_dtype)
            ref_gpu = reference.dequantize_slots_reference(values, scales, amax, slot_list, scale_rule=rule,
                                                           out_dtype=out_dtype).cpu()
            diff = (got.float() - ref_cpu.float()).abs()
            rel = diff / ref_cpu.float().abs().clamp_min(1e-30)
            out[f"{rule}/{out_dtype}"] = {
                "differ": int((diff > 0).sum()), "elements": diff.numel(), "max_rel": float(rel[diff > 0].max())
                if (diff > 0).any() else 0.0, "ref_gpu_vs_cpu_differ": int((ref_gpu != ref_cpu).sum()),
                "kernel_vs_ref_gpu_differ": int((got != ref_gpu).sum())}
            print(rule, out_dtype, out[f"{rule}/{out_dtype}"], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
