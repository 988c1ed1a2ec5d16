"""The estimated size of a run's KV cache, checked against the device before anything is allocated.

The core cache holds K and V for every layer: 2 x layers x batch (x2 with CFG) x window tokens x
dim values. A storage plugin may keep them smaller (4-bit K/V at the least), so the check refuses
only a cache that would not fit in the device's whole memory even at 4 bits per value (GPU memory,
or host RAM on the CPU): a window or frame size no storage can run. The actual size is logged when
the cache is built (longlive/generate.py).
"""
from __future__ import annotations

import os

from longlive.config import Experiment
from longlive.errors import ConfigError
from longlive.geometry import Geometry

_MIN_BITS = 4  # the smallest K/V element a storage plugin offers


def cache_values(experiment: Experiment, preset, codec) -> int:
    """K and V values the core cache of `experiment` holds on one device."""
    s = experiment.sampler
    geometry = Geometry(height=s.height, width=s.width, temporal_stride=codec.temporal_stride,
                        spatial_stride=codec.spatial_stride, patch_h=preset.patch[1], patch_w=preset.patch[2],
                        frames_per_chunk=s.frames_per_chunk)
    batch = (experiment.generate.batch if experiment.generate is not None else 1) * (2 if s.guidance != 1.0 else 1)
    # Under sequence parallelism each rank holds heads/sp of every cached token.
    return 2 * preset.num_layers * batch * geometry.tokens(s.window_frames) * preset.dim // experiment.parallel.sp


def device_bytes(device: str) -> int | None:
    """Total memory of `device` ("cpu": host RAM, read without torch; "cuda[:N]"); None when unknown."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    if device != "cpu":
        return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_cache_fits(experiment: Experiment, preset, codec, device: str) -> None:
    """ConfigError when the cache cannot fit the device at any storage precision (module docstring)."""
    total = device_bytes(device)
    if total is None:
        return
    need = cache_values(experiment, preset, codec) * _MIN_BITS // 8
    if need > total:
        s = experiment.sampler
        raise ConfigError(f"sampler.window_frames: a KV cache of {s.window_frames} frames at {s.width}x{s.height} "
                          f"needs at least {need / 2**30:.1f} GiB (at {_MIN_BITS} bits per value) but {device} has "
                          f"{total / 2**30:.1f} GiB; lower sampler.window_frames, height/width or generate.batch")
