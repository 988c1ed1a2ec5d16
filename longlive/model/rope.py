"""3-D rotary position embedding (RoPE) of Wan2.x, in real arithmetic.

Math. A head of `d` channels is read as d/2 rotation pairs; pair i is channels (2i, 2i+1)
(adjacent interleaved, exactly Wan's `view_as_complex(x.reshape(..., -1, 2))`). The pairs are
split over the three axes of the token grid: the first `d/2 - 2*(d//6)` pairs rotate with the
latent-frame index f, the next `d//6` with the row index h, the last `d//6` with the column
index w (d = 128: 22/21/21 pairs = 44/42/42 channels). Within an axis of `2n` channels, pair j
turns by the angle `pos * theta**(-2j / (2n))`, and the rotation is

    out[2i]   = x[2i] * cos(a_i) - x[2i+1] * sin(a_i)
    out[2i+1] = x[2i] * sin(a_i) + x[2i+1] * cos(a_i)

Angles are computed directly from the positions in float64 (no 1024-entry table as in Wan), so
temporal positions are unbounded; `start_frame` shifts the temporal index (chunked inference).

Layout. Tokens are ordered (F, H, W), as the patch embedding flattens them. `rope_tables`
returns cos/sin of shape [L, d/2] in float32, L = F*H*W; `apply_rope` takes x [B, L, heads, d].
Compute the tables once per forward and share them across layers.
"""
from __future__ import annotations

import torch


def rope_axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs given to the (frame, height, width) axes for a head of `head_dim` channels."""
    assert head_dim % 2 == 0 and head_dim >= 6, head_dim
    spatial = head_dim // 6
    return head_dim // 2 - 2 * spatial, spatial, spatial


def _axis_angles(positions: torch.Tensor, pairs: int, theta: float) -> torch.Tensor:
    """Angles [len(positions), pairs] in float64 for one axis of `2*pairs` channels."""
    exponent = torch.arange(pairs, dtype=torch.float64, device=positions.device) * (2.0 / (2 * pairs))
    inv_freq = theta ** (-exponent)  # [pairs]
    return positions.to(torch.float64)[:, None] * inv_freq[None, :]


def rope_tables(
    frames: int,
    height_tokens: int,
    width_tokens: int,
    head_dim: int,
    *,
    start_frame: int = 0,
    device: torch.device | str | None = None,
    theta: float = 10000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [frames*height_tokens*width_tokens, head_dim/2] float32, tokens in (F, H, W) order."""
    pf, ph, pw = rope_axis_pairs(head_dim)
    f_pos = torch.arange(start_frame, start_frame + frames, device=device)
    h_pos = torch.arange(height_tokens, device=device)
    w_pos = torch.arange(width_tokens, device=device)
    ang_f = _axis_angles(f_pos, pf, theta)[:, None, None, :].expand(frames, height_tokens, width_tokens, pf)
    ang_h = _axis_angles(h_pos, ph, theta)[None, :, None, :].expand(frames, height_tokens, width_tokens, ph)
    ang_w = _axis_angles(w_pos, pw, theta)[None, None, :, :].expand(frames, height_tokens, width_tokens, pw)
    angles = torch.cat([ang_f, ang_h, ang_w], dim=-1).flatten(0, 2)  # [L, head_dim/2]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, L, heads, d] by the tables [L, d/2]; computed in float32, returned in x's dtype."""
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, L, heads, d/2, 2]
    even, odd = pairs[..., 0], pairs[..., 1]
    c = cos[:, None, :]  # [L, 1, d/2]
    s = sin[:, None, :]
    rotated = torch.stack([even * c - odd * s, even * s + odd * c], dim=-1)  # [B, L, heads, d/2, 2]
    return rotated.flatten(-2).to(x.dtype)
