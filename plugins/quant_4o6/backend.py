"""The only module that calls fouroversix: quantize 2-D tensors and multiply them, on a chosen path.

NVFP4 (fouroversix 1.0.5; shared/reference/nvfp4.md): E2M1 values two to a byte (element 2i in
the low nibble), one E4M3 scale per 16 consecutive elements of a row (or per 16x16 tile with
`block_2d`), stored in the Blackwell 128x4 swizzled layout, and an FP32 per-tensor amax. Rows
are padded to 128 and columns to 64; `QuantizedTensor.original_shape` remembers the real shape.
Scale rules: `static_6` is standard NVFP4 (block max -> 6, global bound 448); `static_4` maps the
block max to 4; `mse`, `mae`, `abs_max` are "Four Over Six": each block is quantized both ways
and the one with the smaller error (squared, absolute, max) is kept, with global bound 256.

Two paths, always chosen explicitly (fouroversix's auto-selection would pick Triton on any CUDA
GPU, Hopper included):
- "real": Blackwell kernels. Quantize with the CUDA backend when rounding is nearest without RHT
  or 2-D tiles (its limits), else with Triton; multiply with CUTLASS (FP4 tensor cores, fp32
  accumulation, bf16 out). Written against the documented API; nothing here has a Blackwell GPU.
- "emulate": fouroversix's pure-PyTorch reference, on any device. Its backend class builds the
  Hadamard matrix on "cuda" whatever the input's device, so we call the reference function
  ourselves with the matrix built on the input's device (`get_rht_matrix(device=...)`), padding
  exactly as the backend does; without RHT the result is bit-identical to
  `quantize_to_fp4(x, QuantizationConfig(backend="pytorch"))` (a test checks it). The GEMM is
  fouroversix's PyTorch matmul: both operands dequantized to fp32, an fp32 matmul.
  `fake_quantize` is the fast form of "quantize, then dequantize" for the emulated forward GEMM's
  activations (nearest rounding, 1x16 blocks): fouroversix's reference arithmetic op for op, but
  without the padding to 128 rows, the packing, the swizzled scale layout and the unpacking, so
  `fake_quantize(x) @ dequantize(Q(W)).T` equals `matmul(quantize(x), Q(W))` bit for bit (a test
  checks it on fresh random inputs) at about a quarter of the cost, with one deliberate
  difference: a block whose E4M3 scale is subnormal (block max below ~2^-6 / S of the tensor's
  amax) can round its scale down far enough that an element lands above 6; the hardware
  saturates it to 6 (`cvt.rn.satfinite`), as the core reference does, and so does `fake_quantize`,
  while fouroversix 1.0.5's reference keeps the value (8, 10, ...) and its bf16-to-E2M1 encoder
  then writes a wrong code (8 becomes -0, 12 becomes -0.5).
Transposed operands are quantized as `x.T.contiguous()`: the PyTorch backend's `transpose=True`
pads with the wrong divisors (nvfp4.md §2.5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fouroversix import DataType, MatmulBackend, QuantizationConfig, QuantizedTensor, QuantizeBackend, fp4_matmul
from fouroversix import dequantize as fouroversix_dequantize
from fouroversix import quantize_to_fp4 as fouroversix_quantize
from fouroversix.quantize.pytorch.reference import quantize_to_fp4 as reference_quantize
from fouroversix.quantize.utils import get_rht_matrix
from fouroversix.utils import BLACKWELL_SM_IDS, RoundStyle, ScaleRule

SCALE_RULES = ("static_6", "static_4", "mse", "mae", "abs_max")
ROUND_STYLES = ("nearest", "stochastic")
BLOCK = 16  # elements per E4M3 scale
ROW_PAD, COL_PAD = 128, 4 * BLOCK  # the swizzled scale layout's tile


def probe(device: torch.device) -> tuple[bool, str]:
    """Whether the real path (CUTLASS FP4 GEMM, CUDA/Triton quantize) runs on `device`, and why not."""
    if device.type != "cuda":
        return False, f"the real NVFP4 path needs a Blackwell CUDA GPU; run.device is {device}"
    major, minor = torch.cuda.get_device_capability(device)
    if major not in BLACKWELL_SM_IDS:
        return False, (f"compute capability {major}.{minor} has no FP4 tensor cores; "
                       f"fouroversix's kernels need 10.x, 11.x or 12.x (Blackwell)")
    try:
        import fouroversix._C  # noqa: F401  (built only with CUDA_ARCHS, not with SKIP_CUDA_BUILD=1)
    except ImportError:
        return False, ("fouroversix was installed without its CUDA extension (SKIP_CUDA_BUILD=1); reinstall with "
                       "CUDA_ARCHS=100 FORCE_BUILD=1 pip install --no-build-isolation fouroversix==1.0.5")
    return True, ""


def quantize(x: torch.Tensor, *, rule: str, path: str, round_style: str = "nearest", block_2d: bool = False,
             rht: bool = False) -> QuantizedTensor:
    """NVFP4 of a 2-D tensor x [rows, cols] (rows of 16-element blocks along cols)."""
    if x.ndim != 2:
        raise ValueError(f"quantize takes a 2-D tensor, got shape {tuple(x.shape)}")  # internal: callers flatten
    if path == "real":
        simple = round_style == "nearest" and not rht and not block_2d
        config = QuantizationConfig(backend=QuantizeBackend.cuda if simple else QuantizeBackend.triton,
                                    scale_rule=rule, round_style=round_style, block_scale_2d=block_2d, rht=rht)
        return fouroversix_quantize(x, config)
    return _reference_quantize(x, rule=rule, round_style=round_style, block_2d=block_2d, rht=rht)


def _reference_quantize(x: torch.Tensor, *, rule: str, round_style: str, block_2d: bool,
                        rht: bool) -> QuantizedTensor:
    """fouroversix's PyTorch backend with the Hadamard matrix on x's device (module docstring)."""
    rows, cols = x.shape
    x = F.pad(x, (0, -cols % COL_PAD, 0, -rows % ROW_PAD))  # [rows_padded, cols_padded]
    values, scales, amax = reference_quantize(
        x, had=get_rht_matrix(device=x.device).to(x.dtype) if rht else None,  # entries +-1/4: exact in any float fp4_format=DataType.nvfp4,
        round_style=RoundStyle(round_style), scale_rule=ScaleRule(rule), block_scale_2d=block_2d, pack_values=True,
        use_blackwell_scale_layout=True)
    return QuantizedTensor(values, scales, amax, DataType.nvfp4, (rows, cols), ScaleRule(rule),
                           values_are_packed=True, scale_factors_are_in_blackwell_layout=True)


def fake_quantize(x: torch.Tensor, *, rule: str) -> torch.Tensor:
    """dequantize(quantize(x)) in fp32 for a 2-D x [rows, cols], nearest rounding, 1x16 blocks.

    The same ops in the same order as fouroversix's reference (`quantize_to_nvfp4`,
    `select_fouroversix`) and its dequantize (values * scales, then * amax / (V * S)); the zero
    padding beyond the last 16-element block, which changes no block, is left out, and values
    above 6 saturate (module docstring).
    """
    rows, cols = x.shape
    padded = F.pad(x, (0, -cols % BLOCK))  # [rows, cols_16]
    blocks = padded.reshape(-1, BLOCK).float()  # [rows * cols_16 / 16, 16]
    amax = padded.abs().max().float()
    scale_rule = ScaleRule(rule)
    value_max = DataType.nvfp4.quantized_value_type.get_maximum_value(scale_rule)
    both_max = value_max * DataType.nvfp4.scale_type.get_maximum_value(scale_rule)
    encode = torch.tensor(both_max, dtype=torch.float32, device=x.device) / amax
    decode = 1 / encode
    block_max = blocks.abs().amax(dim=-1)  # [blocks]

    def candidate(expansion: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        unrounded = block_max / torch.tensor(value_max, dtype=torch.float32, device=x.device) * encode
        if expansion is not None:
            unrounded = unrounded * expansion
        scales = torch.where(amax == 0, 0.0, unrounded).to(torch.float8_e4m3fn).float()[:, None]  # [blocks, 1]
        multiplier = torch.where(scales != 0, 1 / (decode * scales), 0)  # per block, as fouroversix's broadcast
        return _round_to_e2m1(blocks * multiplier), scales

    values, scales = candidate(None)
    if scale_rule not in (ScaleRule.static_6, ScaleRule.static_4):  # Four Over Six: keep the better of 6 and 4
        values4, scales4 = candidate(1.5)
        divisor = torch.tensor(both_max, dtype=torch.float32, device=x.device)
        error6 = _block_error(values * scales * amax / divisor - blocks, scale_rule)
        error4 = _block_error(values4 * scales4 * amax / divisor - blocks, scale_rule)
        pick4 = (error4 < error6)[:, None]
        values, scales = torch.where(pick4, values4, values), torch.where(pick4, scales4, scales)
    dequantized = (values * scales) * amax / both_max  # [blocks, 16]
    return dequantized.reshape(rows, -1)[:, :cols]


def _round_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the E2M1 grid {0, 0.5, 1, 1.5, 2, 3, 4, 6} (signed), ties to even, saturating at 6.

    Each binade is a uniform grid (steps 0.5, 1, 2), so rounding x / step to the nearest even
    integer is E2M1's round-to-nearest-even; below 6 this is fouroversix's `fake_quantize_to_e2m1`.
    Scaling by the powers of two 1 / step and step is exact.
    """
    magnitude = x.abs().clamp_(max=6.0)
    inverse_step = (magnitude < 2) + 0.5 * (magnitude < 4) + 0.5  # 2, 1 or 0.5
    return torch.round(magnitude * inverse_step).div_(inverse_step).copysign_(x)


def _block_error(difference: torch.Tensor, rule: ScaleRule) -> torch.Tensor:
    if rule == ScaleRule.abs_max:
        return difference.abs().max(axis=-1).values
    if rule == ScaleRule.mae:
        return difference.abs().sum(axis=-1)
    return (difference**2).sum(axis=-1)


def matmul(a: QuantizedTensor, b: QuantizedTensor, *, path: str) -> torch.Tensor:
    """a @ b.T of two NVFP4 tensors [M, K] and [N, K] -> [M, N] (bf16 on the real path, fp32 emulated)."""
    if path == "real":
        return fp4_matmul(a, b, backend=MatmulBackend.cutlass, out_dtype=DataType.bfloat16)
    return fp4_matmul(a, b, backend=MatmulBackend.pytorch, out_dtype=DataType.float32)


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dequantized tensor of its original shape (fp32 arithmetic, PyTorch backend)."""
    return fouroversix_dequantize(q, dtype, backend=QuantizeBackend.pytorch, intermediate_dtype=torch.float32)


def packed_shapes(rows: int, cols: int) -> tuple[tuple[int, int], int]:
    """(values shape, number of scales) of an NVFP4 [rows, cols] tensor after padding."""
    rows_p, cols_p = rows + -rows % ROW_PAD, cols + -cols % COL_PAD
    return (rows_p, cols_p // 2), rows_p * cols_p // BLOCK
