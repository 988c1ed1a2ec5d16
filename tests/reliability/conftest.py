"""Fixtures of the reliability tests (issue 23); the training helpers come from tests/train/toy_setup.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture()
def toy_shards(tmp_path):
    """Two fresh shards of 8 tiny toy clips (a test may damage them)."""
    from toy_setup import write_toy_shards

    return write_toy_shards(tmp_path / "shards", num_clips=8, clips_per_shard=4, frames=8)

