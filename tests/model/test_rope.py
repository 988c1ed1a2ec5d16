"""3-D RoPE in real arithmetic vs a complex-number reference (Wan's view_as_complex convention)."""
from __future__ import annotations

import torch

from longlive.model.rope import apply_rope, rope_axis_pairs, rope_tables


def _complex_reference(x: torch.Tensor, frames: int, height: int, width: int, start_frame: int,
                       theta: float = 10000.0) -> torch.Tensor:
    """Wan's rope_apply, rewritten independently: polar tables per axis, complex multiply in float64."""
    d = x.shape[-1]
    pairs = (d // 2 - 2 * (d // 6), d // 6, d // 6)

    def axis(positions: torch.Tensor, n: int) -> torch.Tensor:
        inv = 1.0 / theta ** (torch.arange(0, 2 * n, 2, dtype=torch.float64) / (2 * n))
        return torch.polar(torch.ones(len(positions), n, dtype=torch.float64),
                           torch.outer(positions.double(), inv))

    ft = axis(torch.arange(start_frame, start_frame + frames), pairs[0])
    fh = axis(torch.arange(height), pairs[1])
    fw = axis(torch.arange(width), pairs[2])
    table = torch.cat([
        ft[:, None, None].expand(frames, height, width, -1),
        fh[None, :, None].expand(frames, height, width, -1),
        fw[None, None, :].expand(frames, height, width, -1),
    ], dim=-1).reshape(frames * height * width, 1, -1)  # [L, 1, d/2]
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * table).flatten(-2)


def test_axis_split_matches_wan():
    assert rope_axis_pairs(128) == (22, 21, 21)  # 44/42/42 channels
    assert rope_axis_pairs(32) == (6, 5, 5)


def test_apply_rope_matches_complex_reference():
    torch.manual_seed(0)
    for head_dim, grid, start in ((128, (3, 2, 5), 0), (32, (4, 3, 2), 7), (48, (2, 2, 2), 5000)):
        x = torch.randn(2, grid[0] * grid[1] * grid[2], 3, head_dim)
        cos, sin = rope_tables(*grid, head_dim, start_frame=start)
        assert cos.shape == (x.shape[1], head_dim // 2) and cos.dtype == torch.float32
        ours = apply_rope(x, cos, sin)
        ref = _complex_reference(x, *grid, start_frame=start)
        torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-5)


def test_start_frame_is_a_temporal_offset():
    full_cos, full_sin = rope_tables(7, 2, 3, 32)
    cos, sin = rope_tables(4, 2, 3, 32, start_frame=3)
    torch.testing.assert_close(cos, full_cos[3 * 6:])
    torch.testing.assert_close(sin, full_sin[3 * 6:])


def test_scores_depend_on_frame_distance_only():
    """q.k after RoPE is invariant to shifting both frames: why roped keys can be cached."""
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 2, 32), torch.randn(1, 1, 2, 32)

    def score(fq: int, fk: int) -> torch.Tensor:
        cq, sq = rope_tables(1, 1, 1, 32, start_frame=fq)
        ck, sk = rope_tables(1, 1, 1, 32, start_frame=fk)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum(-1)

    torch.testing.assert_close(score(10, 3), score(1010, 1003), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(10, 3), score(10, 4), atol=1e-3)


def test_dtype_and_norm_preserved():
    x = torch.randn(1, 12, 2, 32, dtype=torch.bfloat16)
    cos, sin = rope_tables(3, 2, 2, 32, start_frame=2)
    y = apply_rope(x, cos, sin)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float().norm(dim=-1), x.float().norm(dim=-1), atol=0.1, rtol=1e-2)
