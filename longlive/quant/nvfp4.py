"""NVFP4 reference in plain PyTorch: E2M1 values, E4M3 block scales, an FP32 per-tensor scale.

The format (NVIDIA Blackwell's block-scaled FP4; see ../shared/reference/nvfp4.md §1)
--------------------------------------------------------------------------------------
A tensor x is cut into blocks of 16 consecutive elements along its last dim (the GEMM
reduction dim K). Three numbers describe every element:

    x ~ q * s_b * g        q   : an E2M1 value, 4 bits      {0, .5, 1, 1.5, 2, 3, 4, 6} with a sign
                           s_b : the block's E4M3 scale, 8 bits (float8_e4m3fn, >= 0, max 448)
                           g   : one FP32 decode scale per tensor, g = amax / (V * S)

amax = max|x| over the tensor; V is the E2M1 value the largest element maps to (6, or 4 for
`static_4`), S is the largest block scale (448, or 256 for the 4/6 rules, so that a block scale
times 1.5 still fits in E4M3; `scale_max=448` keeps 448 for a 4/6 rule, as TE allows). Quantizing one block (fouroversix 1.0.5's fp32 op order, which we
match bit for bit; TE folds 1/6 into the global scale and differs at rare exact ties):

    enc = (V * S) / amax                     per tensor (all scales 0 when amax == 0)
    s_b = e4m3(clamp((max|x_b| / V) * enc, <= 448))          round-to-nearest-even cast
    q   = E2M1(x * (1 / ((1 / enc) * s_b)))  round-to-nearest-even, saturating at +-6

`stochastic` rounding picks one of the two neighbouring grid values with probability
proportional to proximity (unbiased: E[q] = x inside [-6, 6]); gradients use it.

Scale rules: `static_6` is standard NVFP4 (V=6, S=448); `static_4` maps each block max to 4
(V=4, S=448). The 4/6 rules (`mse`, `mae`, `abs_max`; arXiv 2512.02010) use V=6, S=256 and try
every block twice, with s_b (max -> 6) and with e4m3(1.5 * unrounded s_b) (max -> 4); they keep the
candidate whose dequantized block has the lower summed squared error / summed absolute error /
largest absolute error; ties keep 6. The error terms are FP32 as in fouroversix, but we sum them
in FP64 in a fixed pairwise order (exact in practice, and reproducible by the Triton kernels);
fouroversix sums in FP32 with torch.sum, so at a near-tie (errors equal to ~1 FP32 ulp) it can keep
6 where the exact sums prefer 4 (tests allow a mismatch fraction of 1e-3 for mse/mae, as
fouroversix's own tests do).

Where fouroversix differs (by design): E2M1 rounding saturates at 6 as the hardware does
(`cvt.rn.satfinite`); fouroversix rounds |x| >= 7 to 8 and writes a wrong code. That only happens
when a block scale lands on an E4M3 subnormal (block max < amax * 2^-6 / S) and rounds down a lot.

TE's op order (`op_order="te"`; TransformerEngine 2.20, the pure-PyTorch reference
`transformer_engine/pytorch/custom_recipes/reference_nvfp4.py`, which matches its kernels): for the
static rules the block scale folds 1/V into the global scale first, s_b = e4m3(max|x_b| *
(enc * (1/V))) ("fold the FP4 reciprocal into the global scale multiplier"), so an FP32 rounding
lands elsewhere and at rare exact ties s_b differs by one E4M3 code from fouroversix's order
(nvfp4.md §1.4: 0 of 196,608 scales on N(0,1), 67 of 81,920 on rows scaled by exp(randn)). Its
4/6 candidates use fouroversix's (max|x_b| / V) * enc, but sum the block errors in FP32 in element
order (`_quantize_blockwise_4over6_reference`), and for 16x16 tiles per row first, then over the
16 rows as a pairwise tree (`_sum_4over6_2d_error`, the CUDA warp reduction's order). The element
rounding, the clamp to +-6 and the e4m3 cast are the same in both orders.

2D blocks (`block_2d=True`, weights): one scale per 16x16 tile of a 2-D tensor, stored repeated
on each of the tile's 16 rows, so Q(W)^T == Q(W^T).

Storage: element codes `code = sign << 3 | magnitude index` (0..7 -> 0, .5, 1, 1.5, 2, 3, 4, 6;
code 8 is -0), two per byte, element 2i in the low nibble (as TE, fouroversix, torchao, PTX).
Scales are kept row-major, one per block ([..., K/16]); `to_blocked` gives the 128x4 swizzled
layout Blackwell GEMMs read. A Blackwell GEMM multiplies exact block values q*s_b (exact in bf16),
accumulates in FP32 and multiplies by g_a * g_b last; `emulated_gemm` does exactly that.
"""
from __future__ import annotations

from typing import Literal

import attrs
import torch

BLOCK_SIZE = 16  # elements per block scale
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_MAX_FOUR_OVER_SIX = 256.0  # 4/6 rules: 1.5 * 256 = 384 stays below 448
FOUR_OVER_SIX_FACTOR = 1.5
SCALE_RULES = ("static_6", "static_4", "mse", "mae", "abs_max")
ROUND_STYLES = ("nearest", "stochastic")
OP_ORDERS = ("fouroversix", "te")  # whose FP32 op order quantize follows (module docstring)
ScaleRule = Literal["static_6", "static_4", "mse", "mae", "abs_max"]
RoundStyle = Literal["nearest", "stochastic"]
OpOrder = Literal["fouroversix", "te"]

E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # index = code & 7
# Round-to-nearest-even thresholds between consecutive magnitudes: a magnitude passes
# `>` at ties whose lower neighbour has an even code (mantissa bit 0), `>=` where the upper one does.
_RTNE_STRICT = (0.25, 1.25, 2.5, 5.0)  # ties 0.25 -> 0, 1.25 -> 1, 2.5 -> 2, 5 -> 4
_RTNE_INCLUSIVE = (0.75, 1.75, 3.5)  # ties 0.75 -> 1, 1.75 -> 2, 3.5 -> 4

# TE's fixed wgrad sign vector (fouroversix uses the same); `rht_signs(None)` returns it.
_FIXED_RHT_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)


def scale_rule_constants(scale_rule: str, scale_max: float | None = None) -> tuple[float, float]:
    """(V, S): the E2M1 value a tensor's amax maps to and the largest block scale.

    `scale_max` overrides S (TE's `nvfp4_4over6_e4m3_use_256` lets 4/6 tensors keep 448; its map-to-4
    candidate then clamps at 448 like any scale); None keeps the rule's own bound.
    """
    if scale_rule not in SCALE_RULES:
        raise ValueError(f"scale_rule={scale_rule!r} is not one of {SCALE_RULES}")
    if scale_max is not None:
        if scale_max not in (E4M3_MAX, E4M3_MAX_FOUR_OVER_SIX):
            raise ValueError(f"scale_max={scale_max!r} is not one of ({E4M3_MAX}, {E4M3_MAX_FOUR_OVER_SIX})")
        return scale_rule_constants(scale_rule)[0], scale_max
    if scale_rule == "static_6":
        return E2M1_MAX, E4M3_MAX
    if scale_rule == "static_4":
        return 4.0, E4M3_MAX
    return E2M1_MAX, E4M3_MAX_FOUR_OVER_SIX


def global_decode_scale(amax: torch.Tensor, scale_rule: str, scale_max: float | None = None) -> torch.Tensor:
    """g = amax / (V * S) in FP32: multiply block values q * s_b by it to dequantize."""
    value_max, scale_max = scale_rule_constants(scale_rule, scale_max)
    return amax.float() / torch.tensor(value_max * scale_max, dtype=torch.float32, device=amax.device)


# ---- E2M1 elements ----------------------------------------------------------------------


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    """FP32 values of 4-bit codes (uint8 0..15)."""
    table = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float32, device=codes.device)
    magnitude = table[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -magnitude, magnitude)


def _nearest_magnitude_code(a: torch.Tensor) -> torch.Tensor:
    """Round |x| (a >= 0) to the nearest E2M1 magnitude index, ties to even, saturating at 6."""
    index = torch.zeros(a.shape, dtype=torch.uint8, device=a.device)
    for threshold in _RTNE_STRICT:
        index += (a > threshold).to(torch.uint8)
    for threshold in _RTNE_INCLUSIVE:
        index += (a >= threshold).to(torch.uint8)
    return index


def _stochastic_magnitude_code(a: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Round a >= 0 down or up to a neighbouring magnitude with P(up) = distance from below / gap."""
    a = a.clamp(max=E2M1_MAX)
    table = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float32, device=a.device)
    lower = torch.zeros(a.shape, dtype=torch.long, device=a.device)
    for magnitude in E2M1_MAGNITUDES[1:]:
        lower += (a >= magnitude).long()
    upper = (lower + 1).clamp(max=7)
    gap = table[upper] - table[lower]  # 0 only at the top (a == 6)
    p_up = torch.where(gap > 0, (a - table[lower]) / torch.where(gap > 0, gap, 1.0), 0.0)
    draw = torch.rand(a.shape, generator=generator, device=a.device, dtype=torch.float32)
    return torch.where(draw < p_up, upper, lower).to(torch.uint8)


def round_to_e2m1(
    x: torch.Tensor, *, round_style: RoundStyle = "nearest", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Codes (uint8, same shape) of x on the E2M1 grid; |x| > 6 saturates to 6, NaN gives code 0.

    A negative x that rounds to 0 keeps its sign (code 8, -0), as `cvt.rn` and fouroversix do.
    `generator` drives stochastic rounding (None: torch's default generator).
    """
    if round_style not in ROUND_STYLES:
        raise ValueError(f"round_style={round_style!r} is not one of {ROUND_STYLES}")
    x = x.float()
    if round_style == "nearest":
        index = _nearest_magnitude_code(x.abs())
    else:
        index = _stochastic_magnitude_code(x.abs(), generator)
    return index | ((x < 0).to(torch.uint8) << 3)


# ---- E4M3 scales ------------------------------------------------------------------------


def e4m3_values(bits: torch.Tensor) -> torch.Tensor:
    """FP32 values of float8_e4m3fn bit patterns (uint8), decoded from the format definition.

    1 sign, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is subnormal (m * 2^-9);
    S.1111.111 (0x7F, 0xFF) is NaN; there is no infinity; the largest finite value is 448.
    """
    bits = bits.to(torch.int32)
    exponent = (bits >> 3) & 0xF
    mantissa = (bits & 7).float()
    normal = (1.0 + mantissa / 8.0) * torch.exp2((exponent - 7).float())
    magnitude = torch.where(exponent == 0, mantissa * 2.0**-9, normal)
    magnitude = torch.where((bits & 0x7F) == 0x7F, float("nan"), magnitude)
    return torch.where((bits & 0x80) != 0, -magnitude, magnitude)


def round_to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round FP32 block scales to float8_e4m3fn: clamp to <= 448 first, then round to nearest even.

    The explicit clamp matters: torch saturates on CPU but some versions and devices give NaN
    for values above 448. NaN stays NaN (0x7F).
    """
    return x.float().clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)


# ---- Packing and the blocked scale layout ------------------------------------------------


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """[..., K] uint8 codes (K even) -> [..., K/2] bytes; element 2i in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_fp4: last dim {codes.shape[-1]} is odd; pad it to an even size")
    pairs = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)  # [..., K/2, (low, high)]
    return (pairs[..., 0] & 0xF) | ((pairs[..., 1] & 0xF) << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """[..., K/2] bytes -> [..., K] uint8 codes (inverse of `pack_fp4`)."""
    pairs = torch.stack((packed & 0xF, packed >> 4), dim=-1)  # [..., K/2, 2]
    return pairs.reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """[rows, cols] scales -> flat swizzled layout of Blackwell block-scaled GEMMs (cuBLAS/CUTLASS).

    Rows are padded to a multiple of 128 and cols to a multiple of 4 with zeros. Each 128x4 tile
    is stored contiguously (tiles row-major); inside a tile, row r = 32*i + j and col c go to
    offset 16*j + 4*i + c.
    """
    rows, cols = scales.shape
    padded = scales.new_zeros(_round_up(rows, 128), _round_up(cols, 4))
    padded[:rows, :cols] = scales
    tiles_r, tiles_c = padded.shape[0] // 128, padded.shape[1] // 4
    tiled = padded.reshape(tiles_r, 4, 32, tiles_c, 4)  # [tile row, i, j, tile col, c]
    return tiled.permute(0, 3, 2, 1, 4).reshape(-1)  # [tile row, tile col, j, i, c]


def from_blocked(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of `to_blocked`: flat swizzled scales -> [rows, cols] (padding dropped)."""
    tiles_r, tiles_c = _round_up(rows, 128) // 128, _round_up(cols, 4) // 4
    if blocked.numel() != tiles_r * tiles_c * 512:
        raise ValueError(f"from_blocked: {blocked.numel()} scales cannot hold a [{rows}, {cols}] grid")
    tiled = blocked.reshape(tiles_r, tiles_c, 32, 4, 4)  # [tile row, tile col, j, i, c]
    padded = tiled.permute(0, 3, 2, 1, 4).reshape(tiles_r * 128, tiles_c * 4)
    return padded[:rows, :cols]


# ---- Random Hadamard transform -------------------------------------------------------------


def rht_signs(seed: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """16 random signs (FP32 +-1) from `seed`; None gives TE's fixed wgrad vector."""
    if seed is None:
        return torch.tensor(_FIXED_RHT_SIGNS, dtype=torch.float32, device=device)
    generator = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (BLOCK_SIZE,), generator=generator)
    return (1.0 - 2.0 * bits.float()).to(device)


def rht_matrix(signs: torch.Tensor) -> torch.Tensor:
    """diag(signs) @ H16 / 4 (FP32 [16, 16]); orthogonal, entries +-1/4, so exact in any float."""
    hadamard = torch.ones(1, 1, dtype=torch.float32, device=signs.device)
    sylvester = torch.tensor([[1.0, 1.0], [1.0, -1.0]], device=signs.device)
    while hadamard.shape[0] < BLOCK_SIZE:
        hadamard = torch.kron(hadamard, sylvester)
    return signs.float()[:, None] * hadamard / 4.0


def apply_rht(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Rotate every 16-element block of x's last dim: x_b @ rht_matrix(signs), in FP32.

    Applied to both operands of a GEMM along its reduction dim, it leaves the product unchanged
    (M M^T = I) while spreading outliers over their block before quantization.
    """
    if x.shape[-1] % BLOCK_SIZE:
        raise ValueError(f"apply_rht: last dim {x.shape[-1]} is not a multiple of {BLOCK_SIZE}")
    blocks = x.float().reshape(-1, BLOCK_SIZE)  # [N * K/16, 16]
    return (blocks @ rht_matrix(signs.to(x.device))).reshape(x.shape)


# ---- Quantize, dequantize, GEMM ----------------------------------------------------------


@attrs.frozen(eq=False)
class NVFP4Tensor:
    """A quantized tensor of logical shape `shape` ([..., K]); K is padded to a multiple of 16.

    packed:  uint8 [..., K_pad/2], two E2M1 codes a byte (element 2i in the low nibble)
    scales:  float8_e4m3fn [..., K_pad/16], row-major, one per 1x16 block (2D: tile scale per row)
    amax:    FP32 0-d, the per-tensor max|x| the global scale derives from
    scale_max: the global bound S when it is not the rule's own (`scale_rule_constants`), else None
    """

    packed: torch.Tensor
    scales: torch.Tensor
    amax: torch.Tensor
    shape: tuple[int, ...]
    scale_rule: str
    block_2d: bool = False
    scale_max: float | None = None

    @property
    def global_scale(self) -> torch.Tensor:
        """FP32 decode scale g = amax / (V * S)."""
        return global_decode_scale(self.amax, self.scale_rule, self.scale_max)

    def codes(self) -> torch.Tensor:
        """uint8 [..., K_pad] element codes."""
        return unpack_fp4(self.packed)

    def blocked_scales(self) -> torch.Tensor:
        """Scales of a 2-D tensor in the flat 128x4 swizzled GEMM layout."""
        return to_blocked(self.scales.reshape(-1, self.scales.shape[-1]))


def _tree_sum(terms: torch.Tensor) -> torch.Tensor:
    """Sum FP32 terms over the last dim (a power of two) in FP64, adding adjacent pairs level by
    level. 16 or 256 FP32 terms sum exactly in FP64 unless their magnitudes span ~25 binades, so
    the result rarely depends on order at all, and the fixed order makes even that reproducible."""
    terms = terms.double()
    while terms.shape[-1] > 1:
        terms = terms.reshape(*terms.shape[:-1], terms.shape[-1] // 2, 2)
        terms = terms[..., 0] + terms[..., 1]
    return terms[..., 0]


def _te_sum(terms: torch.Tensor) -> torch.Tensor:
    """TE's FP32 sum of block error terms [..., n]: element by element for a 1x16 block; a 16x16
    tile ([..., 256], row-major inside the tile) sums each row in order, then the 16 row sums
    pairwise, rows 0-7 + 8-15 first (reference_nvfp4.py `_sum_4over6_2d_error`)."""
    rows = terms.reshape(*terms.shape[:-1], -1, BLOCK_SIZE)  # [..., tile rows (1 or 16), 16]
    total = torch.zeros(rows.shape[:-1], dtype=torch.float32, device=terms.device)
    for index in range(BLOCK_SIZE):
        total = total + rows[..., index]
    while total.shape[-1] > 1:
        half = total.shape[-1] // 2
        total = total[..., :half] + total[..., half:]
    return total[..., 0]


def _block_error(dequantized: torch.Tensor, x: torch.Tensor, scale_rule: str, op_order: str = "fouroversix"
                 ) -> torch.Tensor:
    diff = dequantized - x  # [..., block elements]
    if op_order == "te" and scale_rule in ("mse", "mae"):
        return _te_sum(diff * diff if scale_rule == "mse" else diff.abs())
    if scale_rule == "mse":
        return _tree_sum(diff * diff)
    if scale_rule == "mae":
        return _tree_sum(diff.abs())
    return diff.abs().amax(dim=-1)  # abs_max


def quantize_blocks(
    blocks: torch.Tensor,
    amax: torch.Tensor,
    *,
    scale_rule: str,
    round_style: RoundStyle = "nearest",
    generator: torch.Generator | None = None,
    op_order: OpOrder = "fouroversix",
    scale_max: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize FP32 blocks [..., n] (n = 16, or 256 for 2D tiles) with the tensor's amax.

    Returns (codes uint8 [..., n], scales float8_e4m3fn [...]). `op_order`: module docstring;
    `scale_max`: see `scale_rule_constants`.
    """
    if op_order not in OP_ORDERS:
        raise ValueError(f"op_order={op_order!r} is not one of {OP_ORDERS}")
    value_max, scale_max = scale_rule_constants(scale_rule, scale_max)
    amax = amax.float().reshape(())
    both_max = torch.tensor(value_max * scale_max, dtype=torch.float32, device=blocks.device)
    encode = both_max / amax  # inf when amax == 0; masked below
    block_max = blocks.abs().amax(dim=-1)
    v = torch.tensor(value_max, dtype=torch.float32, device=blocks.device)
    if op_order == "te" and scale_rule in ("static_6", "static_4"):
        unrounded = block_max * (encode * torch.reciprocal(v))  # TE: 1/V folded into the global scale
    else:
        unrounded = (block_max / v) * encode
    unrounded = torch.where(amax == 0, torch.zeros_like(unrounded), unrounded)

    def candidate(scales_fp32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scales = round_to_e4m3(scales_fp32)
        s = scales.float()[..., None]
        scaled = torch.where(s != 0, blocks * (1.0 / ((1.0 / encode) * s)), torch.zeros_like(blocks))
        return round_to_e2m1(scaled, round_style=round_style, generator=generator), scales

    codes6, scales6 = candidate(unrounded)
    if scale_rule in ("static_6", "static_4"):
        return codes6, scales6
    codes4, scales4 = candidate(unrounded * FOUR_OVER_SIX_FACTOR)

    def dequantized(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return ((e2m1_values(codes) * scales.float()[..., None]) * amax) / both_max

    err6 = _block_error(dequantized(codes6, scales6), blocks, scale_rule, op_order)
    err4 = _block_error(dequantized(codes4, scales4), blocks, scale_rule, op_order)
    pick4 = err4 < err6  # ties keep 6
    codes = torch.where(pick4[..., None], codes4, codes6)
    scales = torch.where(pick4, scales4.view(torch.uint8), scales6.view(torch.uint8))
    return codes, scales.view(torch.float8_e4m3fn)


def quantize(
    x: torch.Tensor,
    *,
    scale_rule: ScaleRule = "static_6",
    amax: torch.Tensor | None = None,
    block_2d: bool = False,
    round_style: RoundStyle = "nearest",
    generator: torch.Generator | None = None,
    op_order: OpOrder = "fouroversix",
    scale_max: float | None = None,
) -> NVFP4Tensor:
    """Quantize x [..., K] to NVFP4 along its last dim; K (and rows for 2D) padded with zeros.

    `amax` overrides max|x| (e.g. a KV-cache slot's amax); `block_2d` needs a 2-D x; `op_order`
    picks fouroversix's or TE's FP32 op order (module docstring); `scale_max` overrides the rule's
    global bound S (`scale_rule_constants`).
    """
    if block_2d and x.ndim != 2:
        raise ValueError(f"quantize: block_2d needs a 2-D tensor, got shape {tuple(x.shape)}")
    k = x.shape[-1]
    rows = x.numel() // k if k else 0
    k_pad = _round_up(k, BLOCK_SIZE)
    rows_pad = _round_up(rows, BLOCK_SIZE) if block_2d else rows
    flat = torch.zeros(rows_pad, k_pad, dtype=torch.float32, device=x.device)
    flat[:rows, :k] = x.reshape(rows, k).float()  # [R, K_pad]
    if amax is None:
        amax = flat.abs().amax() if flat.numel() else torch.zeros((), device=x.device)
    nb = k_pad // BLOCK_SIZE
    if block_2d:  # [R/16, 16, K/16, 16] -> one 256-element block per tile
        blocks = flat.reshape(rows_pad // BLOCK_SIZE, BLOCK_SIZE, nb, BLOCK_SIZE).permute(0, 2, 1, 3)
        blocks = blocks.reshape(rows_pad // BLOCK_SIZE, nb, BLOCK_SIZE * BLOCK_SIZE)
    else:
        blocks = flat.reshape(rows, nb, BLOCK_SIZE)  # [R, K/16, 16]
    codes, scales = quantize_blocks(
        blocks, amax, scale_rule=scale_rule, round_style=round_style, generator=generator, op_order=op_order,
        scale_max=scale_max,
    )
    if block_2d:  # back to [R, K_pad] codes and per-row [R, K/16] scales
        codes = codes.reshape(-1, nb, BLOCK_SIZE, BLOCK_SIZE).permute(0, 2, 1, 3).reshape(rows_pad, k_pad)
        scales = scales.view(torch.uint8).repeat_interleave(BLOCK_SIZE, dim=0).view(torch.float8_e4m3fn)
        codes, scales = codes[:rows], scales[:rows]
    lead = tuple(x.shape[:-1])
    return NVFP4Tensor(
        packed=pack_fp4(codes.reshape(*lead, k_pad)),
        scales=scales.reshape(*lead, nb),
        amax=amax.float().reshape(()),
        shape=tuple(x.shape),
        scale_rule=scale_rule,
        block_2d=block_2d,
        scale_max=scale_max,
    )


def block_values(q: NVFP4Tensor) -> torch.Tensor:
    """q * s_b in FP32 [..., K_pad]: exact (every product fits bf16), no global scale."""
    scales = q.scales.float().repeat_interleave(BLOCK_SIZE, dim=-1)  # [..., K_pad]
    return e2m1_values(q.codes()) * scales


def dequantize(q: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_hat = (q * s_b) * g in FP32, cut back to `q.shape`, then cast to `dtype`."""
    values = block_values(q) * q.global_scale
    return values[..., : q.shape[-1]].reshape(q.shape).to(dtype)


def emulated_gemm(a: NVFP4Tensor, b: NVFP4Tensor, out_dtype: torch.dtype = torch.bfloat16, *,
                  b_values: torch.Tensor | None = None) -> torch.Tensor:
    """a [..., K] @ b[N, K]^T with Blackwell semantics: exact q*s operands, FP32 accumulation,
    then one multiply by g_a * g_b and one cast to `out_dtype`.

    `b_values`: `block_values(b)`, when the caller keeps it (a weight used in many GEMMs)."""
    if a.shape[-1] != b.shape[-1] or len(b.shape) != 2:
        raise ValueError(f"emulated_gemm: shapes {a.shape} and {b.shape} do not form a @ b^T")
    lhs = block_values(a).reshape(-1, a.packed.shape[-1] * 2)  # [M, K_pad]
    rhs = block_values(b) if b_values is None else b_values  # [N, K_pad]
    if lhs.is_cuda:  # bf16 holds q*s exactly; out_dtype keeps FP32 accumulation without TF32
        acc = torch.mm(lhs.bfloat16(), rhs.bfloat16().T, out_dtype=torch.float32)
    else:
        acc = lhs @ rhs.T  # [M, N] FP32
    out = acc * (a.global_scale * b.global_scale)
    return out.reshape(*a.shape[:-1], b.shape[0]).to(out_dtype)
