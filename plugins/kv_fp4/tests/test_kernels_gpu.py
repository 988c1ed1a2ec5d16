"""The compiled Triton kernels on a CUDA GPU against the PyTorch reference on the GPU and on the CPU.

Run on the GPU machine: `python -m pytest -m gpu plugins/kv_fp4/tests` (CI deselects `gpu`).
"""
from __future__ import annotations

import pytest
import torch

from longlive_plugins.kv_fp4 import reference
from longlive_plugins.kv_fp4.backend import select_backend

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("rule", ["static_6", "mse"])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_triton_kernels_equal_the_reference_on_gpu_and_cpu(rule, head_dim):
    dev = torch.device("cuda")
    backend = select_backend(dev)
    assert backend.name == "triton"
    g = torch.Generator().manual_seed(0)
    slots, batch, tokens, heads = 3, 2, 880, 6  # one latent frame of tokens, CFG batch
    xs = [(torch.randn(batch, tokens, heads, head_dim, generator=g)
           * torch.exp(2 * torch.randn(batch, tokens, heads, 1, generator=g))).bfloat16() for _ in range(slots)]
    values = torch.empty(slots, batch, tokens, heads, head_dim // 2, dtype=torch.uint8, device=dev)
    scales = torch.empty(slots, batch, tokens, heads, head_dim // 16, dtype=torch.uint8, device=dev)
    amax = torch.stack([x.float().abs().amax() for x in xs]).to(dev)
    for s, x in enumerate(xs):
        backend.quantize_chunk(x.to(dev), amax[s], scale_rule=rule, values_out=values[s], scales_out=scales[s])
        want_gpu = reference.quantize_chunk_reference(x.to(dev), amax[s], scale_rule=rule)
        want_cpu = reference.quantize_chunk_reference(x, amax[s].cpu(), scale_rule=rule)
        assert torch.equal(values[s], want_gpu[0]) and torch.equal(scales[s], want_gpu[1])
        assert torch.equal(values[s].cpu(), want_cpu[0]) and torch.equal(scales[s].cpu(), want_cpu[1])
    slot_list = torch.tensor([2, 0, 1], device=dev)
    for out_dtype, bits in ((torch.bfloat16, torch.int16), (torch.float32, torch.int32)):
        got = backend.dequantize_slots(values, scales, amax, slot_list, scale_rule=rule, out_dtype=out_dtype)
        want = reference.dequantize_slots_reference(values.cpu(), scales.cpu(), amax.cpu(), slot_list.cpu(),
                                                    scale_rule=rule, out_dtype=out_dtype)
        assert torch.equal(got.cpu().view(bits), want.view(bits))
