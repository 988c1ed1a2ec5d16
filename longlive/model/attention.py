"""One attention shim over the kernels we use, and the attention masks, each described once.

Layout: q [B, Lq, H, D], k and v [B, Lk, H, D] (the DiT's natural layout and the KV cache's);
output [B, Lq, H, D]. The kernels see [B, H, L, D] views of these (a transpose, no copy).

Backends (config key `model.attention`):
- "sdpa":  torch scaled_dot_product_attention; a mask is passed as a dense boolean [Lq, Lk]
           matrix. Runs everywhere; the CPU path of the tests.
- "cudnn": SDPA forced onto cuDNN attention, no mask: the cached-inference kernel on Hopper
           (about 1.35x flex and 1.9x FA2 on the 5B shapes, see the reference notes).
- "flex":  FlexAttention with a BlockMask, for masked training on GPU: masked-out blocks are
           skipped. The compiled flex function and the BlockMasks are owned by an
           `AttentionKernel` object (never a module global).
- "auto":  CPU -> sdpa; CUDA without mask -> cudnn on compute capability 9.x with bf16/fp16
           inputs, else sdpa; CUDA with a mask -> flex.
A backend the device cannot run raises ConfigError; nothing falls back silently.

A mask is a `mask_mod(b, h, q_idx, kv_idx) -> bool tensor` (True = may attend), FlexAttention's
convention. `dense_mask` evaluates the same function on index grids for the sdpa backend.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, Union

import attrs
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from longlive.errors import ConfigError

log = logging.getLogger(__name__)

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
BACKENDS = ("auto", "sdpa", "cudnn", "flex")
_BLOCK_MASKS_KEPT = 8  # BlockMasks cached per kernel object (one per (mask, lengths, device))


# ---- Masks -------------------------------------------------------------------------------


@attrs.frozen
class BlockCausalMask:
    """Chunk-causal attention over one token sequence of `frames` latent frames.

    A query sees a key iff the key's block (of `frames_per_block` frames) is not later than the
    query's block, and, with `window_frames`, the key's frame is >= end of the query's block -
    window_frames (the window includes the query's own block). Hashable, so BlockMasks built
    from it can be cached by value.
    """

    frames: int
    tokens_per_frame: int
    frames_per_block: int
    window_frames: int | None = None

    def __call__(self, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        q_block = q_idx // self.tokens_per_frame // self.frames_per_block
        kv_frame = kv_idx // self.tokens_per_frame
        allowed = kv_frame // self.frames_per_block <= q_block
        if self.window_frames is not None:
            block_end = (q_block + 1) * self.frames_per_block
            allowed = allowed & (kv_frame >= block_end - self.window_frames)
        return allowed


@attrs.frozen
class TeacherForcingMask:
    """Teacher forcing over a clean and a noisy copy of a video of `frames` latent frames.

    clean -> clean: block-causal. noisy block i -> clean blocks < i and noisy block i.
    Clean tokens never see noisy ones.

    Token order: `slices` equal temporal slices, each [clean slice ; noisy slice], one after the
    other. slices = 1 is [clean ; noisy] (one device, and naive sequence parallelism, whose
    contiguous pieces of [clean ; noisy] gather back to it); slices = sp is Balanced SP's
    natural interleaved order [clean_0 ; noisy_0 ; clean_1 ; noisy_1 ; ...] after the Ulysses
    all-to-all, where rank r holds frames [r F/sp, (r+1) F/sp) of both copies.
    """

    frames: int
    tokens_per_frame: int
    frames_per_block: int
    slices: int = 1

    def __call__(self, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        half = self.frames * self.tokens_per_frame // self.slices  # tokens of one copy of one slice
        block_tokens = self.frames_per_block * self.tokens_per_frame
        q_clean = q_idx % (2 * half) < half
        kv_clean = kv_idx % (2 * half) < half
        q_block = (q_idx // (2 * half) * half + q_idx % half) // block_tokens  # video token -> block
        kv_block = (kv_idx // (2 * half) * half + kv_idx % half) // block_tokens
        clean_rows = q_clean & kv_clean & (kv_block <= q_block)
        noisy_rows = ~q_clean & ((kv_clean & (kv_block < q_block)) | (~kv_clean & (kv_block == q_block)))
        return clean_rows | noisy_rows


def block_causal_mask(
    frames: int, tokens_per_frame: int, frames_per_block: int, window_frames: int | None = None
) -> BlockCausalMask:
    """The chunk-causal mask equivalent to chunked inference with a KV cache (see BlockCausalMask)."""
    if frames_per_block <= 0 or frames % frames_per_block:
        raise ConfigError(
            f"sampler.frames_per_chunk={frames_per_block} must divide the {frames} latent frames of the video"
        )
    if window_frames is not None and window_frames < frames_per_block:
        raise ConfigError(
            f"window_frames={window_frames} must be >= frames_per_chunk={frames_per_block} "
            "(the window includes the chunk being denoised)"
        )
    return BlockCausalMask(frames, tokens_per_frame, frames_per_block, window_frames)


def teacher_forcing_mask(frames: int, tokens_per_frame: int, frames_per_block: int,
                         slices: int = 1) -> TeacherForcingMask:
    """The teacher-forcing mask over [clean ; noisy], or `slices` interleaved slices of it (see TeacherForcingMask)."""
    if frames_per_block <= 0 or frames % frames_per_block:
        raise ConfigError(
            f"frames_per_block={frames_per_block} must divide the {frames} latent frames of the video"
        )
    if slices <= 0 or frames % slices:
        raise ConfigError(f"{slices} teacher-forcing slices do not divide the {frames} latent frames of the video")
    return TeacherForcingMask(frames, tokens_per_frame, frames_per_block, slices)


def dense_mask(mask_mod: MaskMod, q_len: int, kv_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The boolean matrix [q_len, kv_len] of `mask_mod` (True = may attend), for the sdpa backend."""
    q_idx = torch.arange(q_len, device=device)[:, None]
    kv_idx = torch.arange(kv_len, device=device)[None, :]
    zero = torch.zeros((), dtype=torch.long, device=device)
    return mask_mod(zero, zero, q_idx, kv_idx).expand(q_len, kv_len)


_DENSE_MASK_ELEMENTS = 2**28  # largest [rows, kv_len] boolean block evaluated at once by build_block_mask


def build_block_mask(mask_mod: MaskMod, q_len: int, kv_len: int, device: torch.device | str,
                     max_elements: int = _DENSE_MASK_ELEMENTS):
    """FlexAttention's BlockMask of `mask_mod` (128 x 128 blocks), built in passes of query rows.

    torch's `create_block_mask` evaluates the whole [q_len, kv_len] boolean mask at once: 28.5 GB
    for teacher forcing of a 16-s 5B clip (2 x 96 x 880 tokens). Here each pass evaluates at most
    `max_elements` of it (whole 128-row blocks), reduces them to the partial / full block tables,
    and the tables are joined: the same BlockMask (tests/model/test_attention.py).
    """
    from torch.nn.attention import flex_attention as fa

    if q_len * kv_len <= max_elements:
        return fa.create_block_mask(mask_mod, None, None, q_len, kv_len, device=device)
    block = fa._DEFAULT_SPARSE_BLOCK_SIZE
    rows = max(block, max_elements // kv_len // block * block)
    partial, full = [], []
    for start in range(0, q_len, rows):
        shifted = _ShiftedRows(mask_mod, start)
        dense = fa.create_mask(shifted, 1, 1, min(rows, q_len - start), kv_len, device)
        p, f = fa._convert_mask_to_block_mask(dense, block, block, separate_full_blocks=True)
        partial.append(p)
        full.append(f)
    return fa._create_sparse_block_from_block_mask((torch.cat(partial, dim=2), torch.cat(full, dim=2)), mask_mod,
                                                   (q_len, kv_len), block, block)


@attrs.frozen
class _ShiftedRows:
    """`mask_mod` with query indices offset by `start` (one pass of build_block_mask)."""

    mask_mod: MaskMod
    start: int

    def __call__(self, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return self.mask_mod(b, h, q_idx + self.start, kv_idx)


# ---- Backend choice ------------------------------------------------------------------------


def resolve_backend(name: str, device: torch.device | str, masked: bool,
                    dtype: torch.dtype = torch.bfloat16) -> str:
    """The concrete backend ("sdpa", "cudnn" or "flex") that `name` means on `device` for `dtype` inputs.

    Raises ConfigError for an unknown name or a backend this device, dtype or a mask rules out.
    """
    device = torch.device(device)
    if name not in BACKENDS:
        raise ConfigError(f"model.attention={name!r} is not a backend; use one of {list(BACKENDS)}")
    half = dtype in (torch.bfloat16, torch.float16)
    if name == "auto":
        if device.type != "cuda":
            return "sdpa"
        if masked:
            return "flex"
        return "cudnn" if half and torch.cuda.get_device_capability(device)[0] == 9 else "sdpa"
    if name in ("cudnn", "flex") and device.type != "cuda":
        raise ConfigError(
            f"model.attention={name!r} needs a CUDA device but the model runs on {device}; "
            f"use 'sdpa' or 'auto' (allowed: {list(BACKENDS)})"
        )
    if name == "cudnn" and not half:
        raise ConfigError(
            f"model.attention='cudnn' needs bf16 or fp16 activations, got {dtype}; use 'sdpa' or 'auto'"
        )
    if name == "cudnn" and masked:
        raise ConfigError(
            "model.attention='cudnn' takes no attention mask, but this forward is masked "
            "(training / equivalent-mask forward); use 'flex', 'sdpa' or 'auto'"
        )
    return name


# ---- The kernel object ----------------------------------------------------------------------

PreparedMask = Union[torch.Tensor, "torch.nn.attention.flex_attention.BlockMask"]


class AttentionKernel:
    """Runs attention with one configured backend; owns the compiled flex function and its BlockMasks.

    Usage: `mask = kernel.prepare_mask(mask_mod, q_len, kv_len, device)` once per forward (a dense
    bool matrix or a BlockMask, cached here), then `kernel(q, k, v, mask)` in every layer.
    """

    def __init__(self, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"model.attention={backend!r} is not a backend; use one of {list(BACKENDS)}")
        self.backend = backend
        self._flex: Callable | None = None  # compiled on first use
        self._block_masks: OrderedDict[tuple, object] = OrderedDict()

    def __repr__(self) -> str:
        return f"AttentionKernel(backend={self.backend!r})"

    def prepare_mask(self, mask_mod: MaskMod | None, q_len: int, kv_len: int,
                     device: torch.device | str) -> PreparedMask | None:
        """The mask in the form this kernel's backend wants on `device` (None for no mask)."""
        if mask_mod is None:
            return None
        backend = resolve_backend(self.backend, device, masked=True)
        if backend == "sdpa":
            return dense_mask(mask_mod, q_len, kv_len, device)
        key = (mask_mod, q_len, kv_len, str(device))
        block_mask = self._block_masks.get(key)
        if block_mask is None:
            block_mask = build_block_mask(mask_mod, q_len, kv_len, device)
            self._block_masks[key] = block_mask
            while len(self._block_masks) > _BLOCK_MASKS_KEPT:
                self._block_masks.popitem(last=False)
        else:
            self._block_masks.move_to_end(key)
        return block_mask

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 mask: PreparedMask | None = None) -> torch.Tensor:
        """Attention of q [B, Lq, H, D] over k, v [B, Lk, H, D] -> [B, Lq, H, D]."""
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D] views
        if mask is None:
            backend = resolve_backend(self.backend, q.device, masked=False, dtype=q.dtype)
            if backend == "cudnn":
                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                    out = F.scaled_dot_product_attention(qt, kt, vt)
            else:
                out = F.scaled_dot_product_attention(qt, kt, vt)
        elif isinstance(mask, torch.Tensor):
            out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
        else:
            out = self._flex_attention()(qt, kt, vt, block_mask=mask)
        return out.transpose(1, 2)  # [B, Lq, H, D]

    def _flex_attention(self) -> Callable:
        if self._flex is None:
            from torch.nn.attention.flex_attention import flex_attention

            self._flex = torch.compile(flex_attention, dynamic=False)
        return self._flex


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: MaskMod | None = None,
           backend: str | AttentionKernel = "sdpa") -> torch.Tensor:
    """Attention of q [B, Lq, H, D] over k, v [B, Lk, H, D] under an optional mask_mod -> [B, Lq, H, D].

    Pass an `AttentionKernel` as `backend` in loops: a backend name builds a fresh kernel per
    call, which for "flex" means a fresh compile and BlockMask every time.
    """
    kernel = backend if isinstance(backend, AttentionKernel) else AttentionKernel(backend)
    prepared = kernel.prepare_mask(mask, q.shape[1], k.shape[1], q.device)
    return kernel(q, k, v, prepared)
