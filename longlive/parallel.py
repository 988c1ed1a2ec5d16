"""The (dp, sp) device mesh of a run: where this process sits among the processes of a launch.

Plain data, no torch: `validate` and the run record read it without loading torch. The mesh is
built once per run by the device-mesh role (`longlive_make_device_mesh`; the core's default is
`longlive.distributed.build_mesh`) from WORLD_SIZE and `[parallel] sp`.

Rank order: global rank = dp_rank * sp + sp_rank, so the `sp` processes that split one sequence
are consecutive ranks (one host, the fastest links, under torchrun's usual placement).
"""
from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class ParallelMesh:
    """A (dp, sp) grid of processes and this process's place in it; one process = one device."""

    world: int = 1
    rank: int = 0
    sp: int = 1
    backend: str = "none"  # gloo | nccl | none (one process)
    device_mesh: Any = attrs.field(default=None, eq=False, repr=False)  # torch's DeviceMesh ("dp", "sp") or None
    owns_group: bool = False  # the core initialised the process group, so it destroys it (close)

    def __attrs_post_init__(self) -> None:
        if self.sp < 1 or self.world % self.sp:
            raise ValueError(f"ParallelMesh: sp={self.sp} must divide world={self.world}")

    @property
    def dp(self) -> int:
        return self.world // self.sp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sp

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp

    @property
    def is_writer(self) -> bool:
        """The one process that writes the run's outputs (video, latents, records, TensorBoard)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def group(self, dim: str) -> Any:
        """The torch process group of mesh dimension "dp" or "sp" (None in a single process)."""
        if self.device_mesh is None:
            return None
        return self.device_mesh.get_group(dim)

    def describe(self) -> dict:
        """What the run record keeps."""
        return {"world": self.world, "dp": self.dp, "sp": self.sp, "backend": self.backend}
