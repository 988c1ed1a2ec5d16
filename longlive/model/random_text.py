"""A text encoder without semantics: deterministic pseudo-random embeddings per prompt."""
from __future__ import annotations

import zlib

import torch


class RandomTextEncoder:
    """Deterministic pseudo-random prompt embeddings, for benchmarks and tests (no semantics)."""

    def __init__(self, dim: int, text_len: int, tokens: int, device: torch.device, dtype: torch.dtype) -> None:
        self.dim, self.text_len, self.tokens = dim, text_len, min(tokens, text_len)
        self.device, self.dtype = device, dtype

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[B, text_len, dim]; positions after `tokens` are zero like padding."""
        out = torch.zeros(len(prompts), self.text_len, self.dim, dtype=self.dtype, device=self.device)
        for i, prompt in enumerate(prompts):
            g = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
            out[i, : self.tokens] = torch.randn(self.tokens, self.dim, generator=g).to(out)
        return out
