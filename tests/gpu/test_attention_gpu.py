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
