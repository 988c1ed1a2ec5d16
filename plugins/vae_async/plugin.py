"""The vae_async plugin: the latent decoder role, decoding beside the denoiser (decoder.py)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs

from longlive.errors import ConfigError, PluginError
from longlive.registry import hookimpl
from longlive.structure import in_range, one_of

if TYPE_CHECKING:
    import torch

    from longlive.protocols import Codec, Decoder
    from longlive.run import RunContext

log = logging.getLogger(__name__)

MODES = ("thread", "stream", "device")


@attrs.frozen(kw_only=True)
class VaeAsyncConfig:
    """The [plugins.vae_async] table."""

    mode: str = attrs.field(default="thread", validator=one_of(MODES))  # where the decode runs (README)
    queue_depth: int = attrs.field(default=2, validator=in_range(1, 1024))  # chunks waiting before push blocks
    decode_device: str | None = None  # mode = "device": the GPU that decodes, e.g. "cuda:1" (default: the next GPU)

    def __attrs_post_init__(self) -> None:
        if self.decode_device is not None and self.mode != "device":
            raise ConfigError(f"plugins.vae_async.decode_device: set only with mode = \"device\" (mode is "
                              f"{self.mode!r}); remove decode_device or set mode = \"device\"")
        if self.decode_device is not None and not self.decode_device.startswith("cuda:"):
            raise ConfigError(f"plugins.vae_async.decode_device: {self.decode_device!r} is not a GPU; use \"cuda:N\"")


class VaeAsync:
    """Decode each chunk on a worker thread, a second CUDA stream or a second GPU."""

    Config = VaeAsyncConfig

    def __init__(self, config: VaeAsyncConfig) -> None:
        self.config = config

    @hookimpl
    def longlive_check_compat(self, run: RunContext) -> None:
        import torch

        mode = self.config.mode
        if mode == "thread":
            return
        if run.device.type != "cuda":
            fix = "use mode = \"thread\" on a CPU run" if mode == "stream" else \
                "run on GPUs (run.device = \"cuda\") or use mode = \"thread\""
            raise ConfigError(f"plugins.vae_async.mode: {mode!r} needs the run on a CUDA GPU, but run.device is "
                              f"{run.device}; {fix}")
        if mode == "device":
            count = torch.cuda.device_count()
            target = self._decode_device(run)
            if target.index >= count or target.index == (run.device.index or 0):
                raise ConfigError(f"plugins.vae_async.mode: \"device\" decodes on a second GPU ({target}), but this "
                                  f"machine has {count} CUDA GPU(s) and the run uses {run.device}; use mode = "
                                  f"\"stream\" (one GPU) or set plugins.vae_async.decode_device to another GPU")

    @hookimpl
    def longlive_make_decoder(self, codec: Codec, device: torch.device, run: RunContext) -> Decoder:
        import torch

        from longlive_plugins.vae_async.decoder import AsyncDecoder, DeviceLane, StreamLane, ThreadLane

        mode = self.config.mode
        if mode == "thread":
            lane = ThreadLane(codec)
        elif mode == "stream":
            lane = StreamLane(codec, device)
        else:
            if not isinstance(codec, torch.nn.Module):
                raise PluginError(f"vae_async: mode \"device\" copies the codec to a second GPU, but "
                                  f"{type(codec).__name__} is not a torch.nn.Module; use mode = \"stream\"")
            lane = DeviceLane(codec, device, self._decode_device(run))
        log.info("vae_async: decoding in %s mode (queue depth %d)", mode, self.config.queue_depth)
        return AsyncDecoder(lane, queue_depth=self.config.queue_depth)

    def _decode_device(self, run: RunContext) -> torch.device:
        import torch

        if self.config.decode_device is not None:
            return torch.device(self.config.decode_device)
        return torch.device("cuda", (run.device.index or 0) + 1)
