"""vae_async: decode latents beside the denoiser (a worker thread, a second CUDA stream or a second GPU)."""
from __future__ import annotations

from longlive_plugins.vae_async.plugin import VaeAsync, VaeAsyncConfig

__all__ = ["VaeAsync", "VaeAsyncConfig"]
