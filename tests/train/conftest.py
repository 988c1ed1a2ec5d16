"""Fixtures of the training tests; puts this folder on sys.path for `toy_setup` (and the DDP worker)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def toy_shards(tmp_path_factory):
    """Two shards of 8 tiny toy clips (8 pixel frames, 32x32, a cut on a chunk boundary)."""
    from toy_setup import write_toy_shards

    return write_toy_shards(tmp_path_factory.mktemp("shards"), num_clips=8, clips_per_shard=4, frames=8)
