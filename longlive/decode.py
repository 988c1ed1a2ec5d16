"""The core's latent decoder: decodes each chunk as it arrives, on the caller's stream.

Decoders follow the `Decoder` protocol (longlive/protocols.py): `push(index, latents)` for each
chunk in order, then `finish() -> video [B, 3, T, H, W]` in [-1, 1]; `close()` always. The streaming
state of the causal codec carries temporal context across chunks, so the result equals a
whole-video decode.
"""
from __future__ import annotations

import torch

from longlive.protocols import Codec


class SyncDecoder:
    """Decode chunk by chunk, synchronously; frames are moved to the CPU as they come."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._state = None
        self._frames: list[torch.Tensor] = []

    def push(self, index: int, latents: torch.Tensor) -> None:
        if index == 0:
            self._state, self._frames = self.codec.decode_stream(), []
        frames = self.codec.decode_chunk(self._state, latents)  # [B, 3, t, H, W]
        self._frames.append(frames.float().cpu())

    def finish(self) -> torch.Tensor:
        video = torch.cat(self._frames, dim=2) if self._frames else torch.empty(0)
        self._frames, self._state = [], None
        return video

    def close(self) -> None:
        self._frames, self._state = [], None
