"""The core's latent decoder: decodes each chunk as it arrives, on the caller's thread and stream.

Decoders follow the `Decoder` protocol (longlive/protocols.py): `push(index, latents)` per chunk
in order, `ready()` / `flush()` hand back the decoded chunks, `close()` always. The streaming
state of the causal codec carries temporal context across chunks, so the frames equal a
whole-video decode. `vae_async` (plugins/vae_async) decodes beside the denoiser instead.
"""
from __future__ import annotations

import torch

from longlive.protocols import Codec


class SyncDecoder:
    """Decode chunk by chunk, synchronously; frames are moved to the CPU as they come."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._state = None
        self._next = 0  # the index the next push must have
        self._done: list[torch.Tensor] = []

    def push(self, index: int, latents: torch.Tensor) -> None:
        if index == 0:
            self._state, self._done = self.codec.decode_stream(), []
        elif index != self._next or self._state is None:
            raise ValueError(f"decoder: chunk {index} pushed, expected chunk {self._next} (index 0 starts a video)")
        self._next = index + 1
        frames = self.codec.decode_chunk(self._state, latents)  # [B, 3, t, H, W]
        self._done.append(frames.float().cpu())

    def ready(self) -> list[torch.Tensor]:
        done, self._done = self._done, []
        return done

    def flush(self) -> list[torch.Tensor]:
        return self.ready()

    def close(self) -> None:
        self._done, self._state, self._next = [], None, 0
