"""ToyTextEncoder: a download-free text encoder for the toy world (same API as the UMT5 component).

A prompt is lower-cased and split into words (letters, digits, inner hyphens: "up-left" is one
word). Word i becomes e(word) + 0.1 * p(i), where e(word) is a fixed unit vector drawn from a
normal distribution seeded by zlib.crc32(word) (stable across processes, unlike hash()), and p(i)
a sinusoidal position code. Output: float32 [B, text_len, dim]; positions after the last word are
zero, as UMT5's padded positions are. Words past text_len are dropped with a warning.
"""
from __future__ import annotations

import logging
import math
import re
import zlib

import numpy as np
import torch
from torch import nn

from longlive.errors import ConfigError

log = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
POSITION_SCALE = 0.1  # small next to the unit word vectors: word identity dominates


def tokenize(prompt: str) -> list[str]:
    return _WORD.findall(prompt.lower())


def word_vector(word: str, dim: int) -> np.ndarray:
    """The fixed unit vector of `word`, float32 [dim]."""
    v = np.random.default_rng(zlib.crc32(word.encode("utf-8"))).standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


class ToyTextEncoder(nn.Module):
    """Hashed word embeddings + a position code; no parameters, nothing to download.

    The position table is a non-persistent buffer, so `.to(device, dtype)` moves the outputs.
    """

    def __init__(self, dim: int = 32, text_len: int = 16) -> None:
        super().__init__()
        if dim < 2 or dim % 2 or text_len < 1:
            raise ConfigError(f"toyworld text encoder: dim={dim} must be even and >= 2, "
                              f"text_len={text_len} >= 1")
        self.dim = dim
        self.text_len = text_len
        pos = torch.arange(text_len, dtype=torch.float64)[:, None]  # [L, 1]
        freq = torch.exp(-math.log(10_000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        table = torch.zeros(text_len, dim, dtype=torch.float64)  # [L, D]
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq)
        self.register_buffer("positions", (POSITION_SCALE * table).float(), persistent=False)
        self._vectors: dict[str, np.ndarray] = {}  # word -> vector, owned by this encoder

    def extra_repr(self) -> str:
        return f"dim={self.dim}, text_len={self.text_len}"

    def _vector(self, word: str) -> np.ndarray:
        if word not in self._vectors:
            self._vectors[word] = word_vector(word, self.dim)
        return self._vectors[word]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> [B, text_len, dim]; zero after each prompt's last word."""
        if isinstance(prompts, str):
            raise ConfigError("toyworld text encoder: encode() takes a list of prompts, got one string; "
                              "wrap it in a list")
        words = np.zeros((len(prompts), self.text_len, self.dim), dtype=np.float32)  # [B, L, D]
        mask = torch.zeros(len(prompts), self.text_len, 1, dtype=torch.bool)  # [B, L, 1]
        for b, prompt in enumerate(prompts):
            tokens = tokenize(prompt)
            if len(tokens) > self.text_len:
                log.warning("toyworld text encoder: prompt has %d words, keeping the first %d: %r",
                            len(tokens), self.text_len, prompt)
            for i, tok in enumerate(tokens[: self.text_len]):
                words[b, i] = self._vector(tok)
            mask[b, : len(tokens)] = True
        out = torch.from_numpy(words).to(self.positions) + self.positions  # [B, L, D]
        return out * mask.to(out.device)
