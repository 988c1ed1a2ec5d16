"""GPU checks of the attention backends (flex, cuDNN) against a float64 softmax reference.

Run on the GPU machine: `python -m pytest -m gpu tests/gpu` (CI deselects the `gpu` marker).
"""
from __future__ import annotations

import pytest
import torch

from longlive.model.attention import AttentionKernel, attend, dense_mask, resolve_backend, teacher_forcing_mask


def _softmax_reference(q, k, v, mask=None):
    """Plain attention in float64: q, k, v [B, L, H, D]."""
    s = torch.einsum("blhd,bmhd->bhlm", q.double(), k.double()) / q.shape[-1] ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhlm,bmhd->blhd", s.softmax(-1), v.double())


@pytest.mark.gpu
def test_gpu_backends_match_sdpa_reference():
    torch.manual_seed(2)
    dev = torch.device("cuda")
    frames, tpf, fpb = 8, 40, 2  # 320 tokens per half: not a multiple of 128 on purpose
    n = 2 * frames * tpf
    q, k, v = (torch.randn(1, n, 4, 64, device=dev, dtype=torch.bfloat16) for _ in range(3))
    mod = teacher_forcing_mask(frames, tpf, fpb)
    ref = _softmax_reference(q, k, v, dense_mask(mod, n, n, dev)).float()
    flex = AttentionKernel("flex")
    out = attend(q, k, v, mask=mod, backend=flex)
    assert (out.float() - ref).abs().max().item() < 2e-2
    assert resolve_backend("auto", dev, masked=True) == "flex"
    ref = _softmax_reference(q, k, v).float()
    if torch.cuda.get_device_capability(dev)[0] >= 8:
        out = attend(q, k, v, backend="cudnn")
        assert (out.float() - ref).abs().max().item() < 2e-2
    out = attend(q, k, v, backend="auto")
    assert (out.float() - ref).abs().max().item() < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("slices", [2, 4])
def test_flex_interleaved_teacher_forcing_mask_and_row_passes(slices):
    """Balanced SP's interleaved mask on flex (forward and backward) against the float64 reference; the
    BlockMask built in row passes equals torch's."""
    from torch.nn.attention.flex_attention import create_block_mask

    from longlive.model.attention import build_block_mask

    torch.manual_seed(3)
    dev = torch.device("cuda")
    frames, tpf, fpb = 8, 40, 2
    n = 2 * frames * tpf
    q, k, v = (torch.randn(1, n, 4, 64, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mod = teacher_forcing_mask(frames, tpf, fpb, slices)
    ref = _softmax_reference(q, k, v, dense_mask(mod, n, n, dev))
    out = attend(q, k, v, mask=mod, backend=AttentionKernel("flex"))
    assert (out.float() - ref.float()).abs().max().item() < 2e-2
    grads = torch.autograd.grad(out.float().sum(), (q, k, v))
    refs = torch.autograd.grad(ref.sum(), (q, k, v))
    for g, r in zip(grads, refs):
        assert (g.float() - r.float()).abs().max().item() < 5e-2 * max(1.0, r.abs().max().item())
    passes = build_block_mask(mod, n, n, dev, max_elements=128 * n)
    assert torch.equal(passes.to_dense(), create_block_mask(mod, None, None, n, n, device=dev).to_dense())
