"""The protocols of the parts a run is assembled from (KV storage and policy live in cache.py).

Each is a `typing.Protocol`: a plugin's class fits by having the methods, no base class needed.
The contract tests (tests/test_contracts.py) run every installed implementation through them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@runtime_checkable
class Codec(Protocol):
    """Pixels <-> latents. Video [B, 3, T, H, W] in [-1, 1]; latents [B, C, F, h, w].

    Causal codecs map T = 1 + stride * (F - 1) pixel frames to F latent frames. The streaming
    calls carry temporal context across chunks, so chunked decoding equals a whole decode.
    """

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def decode_stream(self) -> Any:
        """A fresh streaming state for `decode_chunk`."""

    def decode_chunk(self, state: Any, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next latent frames of a stream; returns their pixel frames."""


@runtime_checkable
class TextEncoder(Protocol):
    """Prompts -> [B, text_len, text_dim] embeddings, zero-padded after the prompt's tokens."""

    def encode(self, prompts: list[str]) -> torch.Tensor: ...


@runtime_checkable
class Decoder(Protocol):
    """Turns each chunk's latents into frames, in chunk order (the `longlive_make_decoder` role).

    The main thread drives it (so whatever consumes the frames, e.g. the mp4 sink, stays
    single-threaded) and an error in a worker surfaces at the main thread's next call:

    - `push(index, latents)` for chunks 0, 1, 2, ... (index 0 starts a new video). `latents`
      [B, C, f, h, w] are on the decoder's device; the caller must not modify them afterwards
      (an async decoder holds them until it has decoded them). May block (back-pressure).
    - `ready() -> list[frames]`: the chunks decoded since the last call, in order, each
      [B, 3, t, H, W] float32 in [-1, 1] on the CPU; never blocks.
    - `flush() -> list[frames]`: waits for every pushed chunk; returns the rest, in order.
    - `close()`: releases workers, queues and device memory; always called (also after an
      error), any number of times.

    A worker's exception is raised (chained, with its traceback) by the next push/ready/flush.
    The frames equal `codec.decode` of the whole latent video, bit for bit.
    """

    def push(self, index: int, latents: torch.Tensor) -> None: ...

    def ready(self) -> list[torch.Tensor]: ...

    def flush(self) -> list[torch.Tensor]: ...

    def close(self) -> None: ...


@runtime_checkable
class Objective(Protocol):
    """The training loss (the `longlive_make_objective` role).

    `objective(model, batch, generator) -> (loss, metrics)`: `batch` holds "latents"
    [B, C, F, H, W], "context" [B, chunks, L, D] and "seeds" [B]; the objective re-seeds
    `generator` from the seeds, so draws do not depend on how a batch is split. `loss` is a
    0-d tensor with grad; `metrics` maps names to detached 0-d tensors. A batch may also hold
    "clean_frames" [B, F] bool (I2V: given clean, no loss). Teacher forcing passes the keyword
    `recycling` (longlive/train/error_recycling.py) only when [train.error_recycling] is enabled;
    an objective that cannot recycle errors may leave it out of its signature.
    """

    def __call__(self, model: Any, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]: ...
