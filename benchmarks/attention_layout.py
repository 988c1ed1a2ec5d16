"""cuDNN SDPA at the 5B cached-chunk shape with three memory layouts of q, k, v (GPU only).

    python benchmarks/attention_layout.py

Lq = 7,040 query tokens (one chunk), Lk = 28,160 keys (a full 32-frame window), 24 heads of 128,
bf16. Layouts: "BLHD" = [B, L, H, D] tensors seen as [B, H, L, D] through a transpose (what the
projections produce); "BHLD" = contiguous [B, H, L, D]. Median of 20 timed calls after 5 warm-up
calls (triton.testing.do_bench); fresh random inputs; the three results are checked against one
another.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench


def main() -> None:
    b, h, d, lq, lk = 1, 24, 128, 7040, 28160
    dev, dt = torch.device("cuda"), torch.bfloat16
    q_blhd = torch.randn(b, lq, h, d, device=dev, dtype=dt)
    k_blhd, v_blhd = (torch.randn(b, lk, h, d, device=dev, dtype=dt) for _ in range(2))
    variants = {
        "q,k,v BLHD (strided)": (q_blhd.transpose(1, 2), k_blhd.transpose(1, 2), v_blhd.transpose(1, 2)),
        "q BLHD, k,v BHLD": (q_blhd.transpose(1, 2), k_blhd.transpose(1, 2).contiguous(),
                             v_blhd.transpose(1, 2).contiguous()),
        "q,k,v BHLD (contiguous)": tuple(t.transpose(1, 2).contiguous() for t in (q_blhd, k_blhd, v_blhd)),
    }
    flops = 4 * b * h * d * lq * lk
    outs = {}
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        for name, (q, k, v) in variants.items():
            ms = do_bench(lambda: F.scaled_dot_product_attention(q, k, v), warmup=25, rep=200, return_mode="median")
            outs[name] = F.scaled_dot_product_attention(q, k, v).float()
            print(f"{name:28s} {ms:7.3f} ms  {flops / ms / 1e9:6.0f} TFLOP/s")
    ref = next(iter(outs.values()))
    for name, out in outs.items():
        assert torch.isfinite(out).all()
        print(f"{name:28s} max |diff| vs first: {(out - ref).abs().max().item():.2e}")
    print(torch.cuda.get_device_name(), torch.__version__, torch.backends.cudnn.version())


if __name__ == "__main__":
    main()
