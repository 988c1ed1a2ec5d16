"""NVFP4Storage: the KV cache's storage with K and V held as NVFP4 (the kv_fp4 KV-storage role).

Per K and per V, preallocated once:
    values [L, S, B, T, H, D/2] uint8   two E2M1 codes a byte (low nibble first)
    scales [L, S, B, T, H, D/16] uint8  the E4M3 bits of one scale per 16 elements of head_dim
    amax   [L, S]               fp32    one per (layer, slot, K or V): the tensor's global scale
(L layers, S slots, B batch (doubled under CFG), T tokens of a chunk, H heads, D head_dim).

Lifecycle (longlive/cache.py): the denoising forwards of a chunk write nothing; their queries see
the dequantized visible slots plus the chunk's own BF16 K/V. The clean t=0 pass (and a re-cache
pass) has `keep=True`: its K/V are quantized into the working slot as each layer computes them,
so each chunk is quantized once and no BF16 copy of it is held. `attend` dequantizes the other
visible slots with one kernel launch straight into a scratch buffer of one layer's window and puts
the chunk's own K/V at its end.

Relative RoPE turns cached keys through `read`/`write` (dequantize, rotate, re-quantize): each
turn adds one rounding; docs/benchmarks.md measures the error over 1,000 latent frames.
"""
from __future__ import annotations

import torch

from longlive.cache import CacheSpec, ChunkPlan
from longlive_plugins.kv_fp4.backend import KVFP4Backend, select_backend
from longlive_plugins.kv_fp4.reference import check_head_dim, check_scale_rule


class NVFP4Storage:
    """K/V slots in NVFP4 with the kv_fp4 kernels (Triton on CUDA, the PyTorch reference elsewhere)."""

    # Relative error a stored and re-read chunk may carry (the contract test's bound): NVFP4's
    # relative squared error is about 0.009, so the relative (L2) error about 0.095.
    expected_relative_error = 0.12

    def __init__(self, spec: CacheSpec, *, scale_rule: str = "static_6", backend: KVFP4Backend | None = None) -> None:
        check_scale_rule(scale_rule)
        check_head_dim(spec.head_dim)
        self.spec, self.scale_rule = spec, scale_rule
        self.backend = backend or select_backend(spec.device)
        shape = (spec.num_layers, spec.num_slots, spec.batch, spec.chunk_tokens, spec.num_heads)
        d = spec.head_dim
        self.values = {kind: torch.zeros(*shape, d // 2, dtype=torch.uint8, device=spec.device) for kind in "kv"}
        self.scales = {kind: torch.zeros(*shape, d // 16, dtype=torch.uint8, device=spec.device) for kind in "kv"}
        self.amax = {kind: torch.zeros(spec.num_layers, spec.num_slots, dtype=torch.float32, device=spec.device)
                     for kind in "kv"}
        self._scratch: dict[tuple[str, int], torch.Tensor] = {}  # (K or V, visible slots) -> [B, n*T, H, D]
        self._slot_index: dict[tuple[int, ...], torch.Tensor] = {}  # slots -> int32 on the device

    # ---- the attention-time call -------------------------------------------------------------

    def attend(self, layer: int, plan: ChunkPlan, k: torch.Tensor, v: torch.Tensor, *,
               keep: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_chunk(k, v)
        if keep:
            self.write(layer, plan.working_slot, k, v)
        others = [s for s in plan.visible_slots if s != plan.working_slot]
        return self._window(layer, "k", others, k), self._window(layer, "v", others, v)

    def begin(self, plan: ChunkPlan) -> None:
        pass

    def commit(self, plan: ChunkPlan) -> None:
        pass

    def reset(self) -> None:
        for kind in "kv":
            self.amax[kind].zero_()

    # ---- direct slot access ----------------------------------------------------------------

    def write(self, layer: int, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Quantize one chunk's K/V [B, T, H, D] into `slot` of `layer`, in place."""
        self._check_chunk(k, v)
        for kind, x in (("k", k), ("v", v)):
            # Over every head: under a head-split sequence layout (Ulysses SP) the ranks agree on the
            # amax, so each quantizes its heads exactly as a single-device cache would.
            amax = self.spec.layout.reduce_max(x.detach().abs().amax().float())
            self.amax[kind][layer, slot] = amax
            self.backend.quantize_chunk(x, amax, scale_rule=self.scale_rule,
                                        values_out=self.values[kind][layer, slot],
                                        scales_out=self.scales[kind][layer, slot])

    def read(self, layer: int, slots: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized K, V [B, len(slots)*T, H, D] in the spec's dtype (a new tensor)."""
        index = self._index(tuple(slots))
        return tuple(self.backend.dequantize_slots(self.values[kind][layer], self.scales[kind][layer],
                                                   self.amax[kind][layer], index, scale_rule=self.scale_rule,
                                                   out_dtype=self.spec.dtype) for kind in "kv")  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for kind in "kv" for t in (self.values[kind], self.scales[kind], self.amax[kind]))

    # ---- helpers ---------------------------------------------------------------------------

    def _window(self, layer: int, kind: str, others: list[int], own: torch.Tensor) -> torch.Tensor:
        """[B, (len(others)+1)*T, H, D]: the other visible slots dequantized, then the chunk's own K or V."""
        if not others:
            return own
        t = self.spec.chunk_tokens
        key = (kind, len(others))
        out = self._scratch.get(key)
        if out is None:  # one buffer per window length and K or V, reused by every layer and forward
            out = torch.empty(own.shape[0], (len(others) + 1) * t, own.shape[2], own.shape[3], dtype=own.dtype,
                              device=own.device)
            self._scratch[key] = out
        self.backend.dequantize_slots(self.values[kind][layer], self.scales[kind][layer], self.amax[kind][layer],
                                      self._index(tuple(others)), scale_rule=self.scale_rule, out_dtype=own.dtype,
                                      out=out[:, : len(others) * t])  # in place: no second copy of the window
        out[:, len(others) * t:] = own
        return out

    def _index(self, slots: tuple[int, ...]) -> torch.Tensor:
        """The slot numbers as a device tensor, made once per tuple: a host-to-device copy from
        pageable memory per call would make the host wait for the GPU at every attention call."""
        index = self._slot_index.get(slots)
        if index is None:
            index = self._slot_index[slots] = torch.tensor(slots, dtype=torch.int32, device=self.spec.device)
        return index

    def _check_chunk(self, k: torch.Tensor, v: torch.Tensor) -> None:
        s = self.spec
        expected = (s.batch, s.chunk_tokens, s.num_heads, s.head_dim)
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(f"kv_fp4: the cache holds chunks of {expected} (batch, tokens, heads, head_dim), "
                             f"got k {tuple(k.shape)}, v {tuple(v.shape)}")
