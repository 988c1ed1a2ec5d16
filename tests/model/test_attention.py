"""Attention masks (each described once as a mask_mod), the sdpa path, backend choice and its errors."""
from __future__ import annotations

import pytest
import torch

from longlive.errors import ConfigError
from longlive.model.attention import (AttentionKernel, attend, block_causal_mask, dense_mask, resolve_backend,
                                      teacher_forcing_mask)



def _block_causal_reference(frames, tpf, fpb, window=None):
    n = frames * tpf
    m = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        qb = q // tpf // fpb
        for k in range(n):
            kf = k // tpf
            ok = kf // fpb <= qb
            if window is not None:
                ok = ok and kf >= (qb + 1) * fpb - window
            m[q, k] = ok
    return m


def _teacher_reference(frames, tpf, fpb):
    """Direct statement: clean->clean block-causal; noisy block i -> clean blocks < i and noisy block i."""
    n = frames * tpf
    m = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    block = lambda i: (i % n) // tpf // fpb  # noqa: E731
    for q in range(2 * n):
        for k in range(2 * n):
            q_clean, k_clean = q < n, k < n
            if q_clean:
                m[q, k] = k_clean and block(k) <= block(q)
            else:
                m[q, k] = (k_clean and block(k) < block(q)) or (not k_clean and block(k) == block(q))
    return m


def _softmax_reference(q, k, v, mask=None):
    s = torch.einsum("blhd,bmhd->bhlm", q.double(), k.double()) / q.shape[-1] ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhlm,bmhd->blhd", s.softmax(-1), v.double())


def test_block_causal_mask_matches_reference():
    for window in (None, 4, 2):
        mod = block_causal_mask(frames=6, tokens_per_frame=3, frames_per_block=2, window_frames=window)
        assert torch.equal(dense_mask(mod, 18, 18), _block_causal_reference(6, 3, 2, window))


def test_teacher_forcing_mask_matches_reference_and_published_formula():
    frames, tpf, fpb = 6, 2, 2
    mod = teacher_forcing_mask(frames, tpf, fpb)
    ours = dense_mask(mod, 2 * frames * tpf, 2 * frames * tpf)
    assert torch.equal(ours, _teacher_reference(frames, tpf, fpb))
    # the reference notes' one-line mask_mod (Self-Forcing's _prepare_teacher_forcing_mask, diagonal implied)
    n, s = frames * tpf, fpb * tpf
    q = torch.arange(2 * n)[:, None]
    kv = torch.arange(2 * n)[None, :]
    c = q < n
    qb = torch.where(c, q, q - n) // s
    published = (c & (kv < n) & (kv // s <= qb)) | (~c & (((kv < n) & (kv // s < qb)) | ((kv >= n) & ((kv - n) // s == qb))))
    assert torch.equal(ours, published)


def test_masks_are_hashable_values():
    assert block_causal_mask(4, 2, 2) == block_causal_mask(4, 2, 2)
    assert hash(teacher_forcing_mask(4, 2, 2)) == hash(teacher_forcing_mask(4, 2, 2))


def test_bad_mask_geometry_is_a_config_error():
    with pytest.raises(ConfigError, match="frames_per_chunk"):
        block_causal_mask(frames=5, tokens_per_frame=2, frames_per_block=2)
    with pytest.raises(ConfigError, match="window_frames"):
        block_causal_mask(frames=4, tokens_per_frame=2, frames_per_block=2, window_frames=1)
    with pytest.raises(ConfigError, match="frames_per_block"):
        teacher_forcing_mask(frames=6, tokens_per_frame=2, frames_per_block=4)


def test_sdpa_matches_softmax_reference_with_and_without_mask():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 12, 3, 8) for _ in range(3))
    torch.testing.assert_close(attend(q, k, v), _softmax_reference(q, k, v).float(), atol=1e-5, rtol=1e-5)
    mod = block_causal_mask(frames=6, tokens_per_frame=2, frames_per_block=2, window_frames=4)
    ref = _softmax_reference(q, k, v, dense_mask(mod, 12, 12)).float()
    torch.testing.assert_close(attend(q, k, v, mask=mod, backend="sdpa"), ref, atol=1e-5, rtol=1e-5)


def test_masked_keys_have_no_influence():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 8, 2, 4) for _ in range(3))
    mod = block_causal_mask(frames=4, tokens_per_frame=2, frames_per_block=2)
    kernel = AttentionKernel("auto")
    out = attend(q, k, v, mask=mod, backend=kernel)
    k2, v2 = k.clone(), v.clone()
    k2[:, 4:] += 10.0  # the second block: invisible to the first block's queries
    v2[:, 4:] -= 10.0
    out2 = attend(q, k2, v2, mask=mod, backend=kernel)
    torch.testing.assert_close(out[:, :4], out2[:, :4])
    assert not torch.allclose(out[:, 4:], out2[:, 4:])


def test_resolve_backend_on_cpu():
    assert resolve_backend("auto", "cpu", masked=False) == "sdpa"
    assert resolve_backend("auto", "cpu", masked=True) == "sdpa"
    assert resolve_backend("sdpa", "cpu", masked=True) == "sdpa"
    for name in ("cudnn", "flex"):
        with pytest.raises(ConfigError, match=r"model\.attention.*'sdpa'"):
            resolve_backend(name, "cpu", masked=False)
    with pytest.raises(ConfigError, match="not a backend"):
        resolve_backend("flash", "cpu", masked=False)
    with pytest.raises(ConfigError, match="not a backend"):
        AttentionKernel("fa3")


def test_unrunnable_backend_raises_at_call_not_silently():
    q = torch.randn(1, 4, 1, 8)
    with pytest.raises(ConfigError, match="CUDA"):
        attend(q, q, q, backend="cudnn")
    with pytest.raises(ConfigError, match="CUDA"):
        attend(q, q, q, mask=block_causal_mask(2, 2, 1), backend="flex")


@pytest.mark.parametrize("slices", [1, 3])
def test_block_mask_built_in_row_passes_equals_torchs(slices):
    """build_block_mask in passes of 256 rows (a 1000-token query side: a ragged last block) = create_block_mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    from longlive.model.attention import build_block_mask

    frames, tpf, fpb = 6, 250 // 3, 2  # 2 x 6 x 83 = 996 tokens
    mod = teacher_forcing_mask(frames, tpf, fpb, slices)
    length = 2 * frames * tpf
    whole = create_block_mask(mod, None, None, length, length, device="cpu")
    passes = build_block_mask(mod, length, length, "cpu", max_elements=256 * length)
    assert torch.equal(whole.to_dense(), passes.to_dense())
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(whole, name), getattr(passes, name)), name
