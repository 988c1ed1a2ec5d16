"""Latents saved as they are generated: a folder of safetensors parts, each written atomically.

`LatentSink` gathers chunks and writes one part per `chunks_per_file` chunks, so host memory
holds at most that many chunks whatever the video length. Part `<folder>/frames_<first>.safetensors`
holds "latents" [B, C, f, h, w] starting at latent frame `first` (also in its metadata); a run
killed mid-way leaves whole parts only. `read_latents(folder)` concatenates the parts and checks
that they are contiguous.
"""
from __future__ import annotations

from pathlib import Path

import torch

from longlive.model.checkpoint import save_safetensors_atomic

LAYOUT = "[B, C, F, H, W]"


class LatentSink:
    def __init__(self, folder: Path, *, chunks_per_file: int) -> None:
        if chunks_per_file < 1:
            raise ValueError(f"chunks_per_file must be >= 1, not {chunks_per_file}")
        self.folder, self.chunks_per_file = Path(folder), chunks_per_file
        self._pending: list[torch.Tensor] = []
        self._first_frame = 0  # latent frame of the first pending chunk

    def write(self, latents: torch.Tensor) -> None:
        """The next chunk's latents [B, C, f, h, w] (any device; copied to the CPU)."""
        self._pending.append(latents.detach().cpu())
        if len(self._pending) >= self.chunks_per_file:
            self.flush()

    def flush(self) -> None:
        """Write the pending chunks as one part (after the last chunk, or to cut a part early)."""
        if not self._pending:
            return
        part = torch.cat(self._pending, dim=2)
        path = self.folder / f"frames_{self._first_frame:08d}.safetensors"
        save_safetensors_atomic({"latents": part}, path,
                                metadata={"layout": LAYOUT, "first_frame": str(self._first_frame)})
        self._first_frame += part.shape[2]
        self._pending = []


def read_latents(folder: str | Path) -> torch.Tensor:
    """Every part of a latent folder, concatenated along frames: [B, C, F, h, w]."""
    from safetensors import safe_open

    parts = sorted(Path(folder).glob("frames_*.safetensors"))
    if not parts:
        raise FileNotFoundError(f"no latent parts (frames_*.safetensors) in {folder}")
    tensors, expected = [], 0
    for path in parts:
        with safe_open(str(path), framework="pt") as f:
            first = int(f.metadata()["first_frame"])
            if first != expected:
                raise ValueError(f"{path.name} starts at latent frame {first}, expected {expected}: a part is missing")
            tensors.append(f.get_tensor("latents"))
        expected += tensors[-1].shape[2]
    return torch.cat(tensors, dim=2)
