"""Decoding beside the denoiser: a worker thread pulls latent chunks from a bounded queue.

The main thread drives the `Decoder` protocol: `push` hands a chunk to the worker (blocking
while `queue_depth` chunks are waiting: back-pressure keeps memory bounded when decoding is the
slower side), `ready` returns the chunks decoded so far, `flush` waits for the rest. The worker
decodes in push order with one streaming codec state per video, so the frames are the
synchronous decoder's, bit for bit. An exception in the worker is kept and raised (chained, with
the worker's traceback) by the main thread's next push / ready / flush; the worker then discards
what is queued, so the main thread never blocks on a dead worker.

Where the decode runs is a lane:

- `ThreadLane`: on the codec's device from the worker thread (CPU: the decode overlaps the
  denoiser's torch ops, which release the GIL).
- `StreamLane`: a second CUDA stream on the same GPU. `push` records an event on the main
  stream; the side stream waits for it before reading the latents, so the hand-over is ordered
  without blocking the main thread. The latents are marked as used by the side stream
  (`record_stream`) and kept referenced until the worker has synchronised the side stream.
  Frames go to pinned host memory with a non-blocking copy.
- `DeviceLane`: a second GPU with its own copy of the codec. The worker waits for the main
  stream's event, copies the latents across (peer-to-peer where the GPUs allow it), decodes and
  copies the frames to pinned host memory.
"""
from __future__ import annotations

import collections
import copy
import logging
import queue
import threading
from typing import Any

import torch

from longlive.protocols import Codec

log = logging.getLogger(__name__)

_STOP = object()


class ThreadLane:
    """Decode on the codec's own device, from the worker thread."""

    name = "thread"

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def hand_over(self, latents: torch.Tensor) -> Any:
        return latents

    def decode(self, state: Any, handed: Any) -> torch.Tensor:
        return self.codec.decode_chunk(state, handed).float().cpu()


class StreamLane:
    """Decode on a second CUDA stream of the codec's GPU."""

    name = "stream"

    def __init__(self, codec: Codec, device: torch.device) -> None:
        self.codec, self.device = codec, device
        self.stream = torch.cuda.Stream(device)

    def hand_over(self, latents: torch.Tensor) -> Any:
        produced = torch.cuda.Event()
        produced.record(torch.cuda.current_stream(self.device))  # the latents are complete after this point
        latents.record_stream(self.stream)  # the allocator must not reuse them before the side stream is done
        return latents, produced

    def decode(self, state: Any, handed: Any) -> torch.Tensor:
        latents, produced = handed
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            self.stream.wait_event(produced)
            return _to_pinned_host(self.codec.decode_chunk(state, latents), self.stream)


class DeviceLane:
    """Decode on a second GPU with its own copy of the codec."""

    name = "device"

    def __init__(self, codec: Codec, source: torch.device, target: torch.device) -> None:
        self.source, self.target = source, target
        self.codec = copy.deepcopy(codec).to(target)

    def hand_over(self, latents: torch.Tensor) -> Any:
        produced = torch.cuda.Event()
        produced.record(torch.cuda.current_stream(self.source))
        return latents, produced

    def decode(self, state: Any, handed: Any) -> torch.Tensor:
        latents, produced = handed
        produced.synchronize()  # blocks the worker only
        with torch.cuda.device(self.target):
            stream = torch.cuda.current_stream(self.target)
            return _to_pinned_host(self.codec.decode_chunk(state, latents.to(self.target)), stream)


def _to_pinned_host(frames: torch.Tensor, stream: torch.cuda.Stream) -> torch.Tensor:
    """float32 CPU copy of `frames` through pinned memory; returns when the copy is complete."""
    host = torch.empty(frames.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(frames.float(), non_blocking=True)
    stream.synchronize()
    return host


class AsyncDecoder:
    """The `Decoder` protocol over a worker thread and a lane (module docstring)."""

    def __init__(self, lane: ThreadLane | StreamLane | DeviceLane, *, queue_depth: int) -> None:
        self.lane = lane
        self._todo: queue.Queue = queue.Queue(maxsize=queue_depth)
        self._done: collections.deque[torch.Tensor] = collections.deque()
        self._failure: tuple[int, BaseException] | None = None
        self._next, self._closed = 0, False
        self._thread = threading.Thread(target=self._work, name=f"vae_async-{lane.name}", daemon=True)
        self._thread.start()

    def push(self, index: int, latents: torch.Tensor) -> None:
        self._raise_failure()
        if self._closed:
            raise RuntimeError("vae_async: push after close()")
        if index != 0 and index != self._next:
            raise ValueError(f"decoder: chunk {index} pushed, expected chunk {self._next} (index 0 starts a video)")
        self._next = index + 1
        self._todo.put((index, self.lane.hand_over(latents)))  # blocks while the queue is full

    def ready(self) -> list[torch.Tensor]:
        self._raise_failure()
        done = []
        while self._done:
            done.append(self._done.popleft())
        return done

    def flush(self) -> list[torch.Tensor]:
        self._todo.join()
        return self.ready()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._todo.put(_STOP)  # the worker always drains the queue, so this returns
        self._thread.join()
        self._done.clear()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            index, error = self._failure
            raise RuntimeError(f"vae_async ({self.lane.name} mode): decoding chunk {index} failed: "
                               f"{type(error).__name__}: {error}") from error

    def _work(self) -> None:
        state = None
        with torch.inference_mode():
            while True:
                item = self._todo.get()
                try:
                    if item is _STOP:
                        return
                    if self._failure is None:  # after a failure, queued chunks are dropped
                        index, handed = item
                        try:
                            if index == 0:
                                state = self.lane.codec.decode_stream()
                            self._done.append(self.lane.decode(state, handed))
                        except BaseException as e:  # raised in the main thread at its next call
                            self._failure = (index, e)
                finally:
                    self._todo.task_done()
