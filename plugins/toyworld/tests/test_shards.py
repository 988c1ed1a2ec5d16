"""Toy shards: written atomically, read back exactly, chunk bookkeeping, switch marks, disjoint splits."""
from __future__ import annotations

import json

import numpy as np
import pytest

from longlive.errors import ConfigError
from longlive_plugins.toyworld import shards
from longlive_plugins.toyworld.world import parse_caption, sample_clip


def test_write_two_shards_and_read_back(tmp_path):
    paths = shards.write_shards(tmp_path, num_clips=3, clips_per_shard=2, seed=5, split="train", frames=16,
                                size=32, max_shots=3, chunk_frames=2)
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"] + [p.name for p in paths]  # no temps
    assert json.loads((tmp_path / "manifest.json").read_text())["shards"] == {"train-000000.tar": 2,
                                                                             "train-000001.tar": 1}
    samples = list(shards.iter_clips(str(tmp_path / "train-{000000..000001}.tar")))
    assert [s["key"] for s in samples] == ["train-000000000", "train-000000001", "train-000000002"]
    for index, s in enumerate(samples):
        meta = s["meta"]
        assert meta["seed"] == shards.clip_seed(5, "train", index)
        clip = sample_clip(meta["seed"], num_shots=len(meta["shots"]), frames=16, size=32,
                           cut_candidates=range(2, 16, 2), min_shot_frames=1)
        assert s["video"].dtype == np.uint8 and np.array_equal(s["video"], clip.video)
        assert meta["prompt_schedule"] == [list(p) for p in clip.prompt_schedule()]
        assert meta["fps"] == 8.0 and meta["chunk_pixel_frames"] == [[a, a + 2] for a in range(0, 16, 2)]
        captions = clip.frame_captions()
        assert meta["chunk_captions"] == [captions[a] for a in range(0, 16, 2)]
        assert meta["cut_frames"] == [2 * c for c in meta["cut_chunks"]] == clip.cut_frames
        for shot in meta["shots"]:
            assert parse_caption(shot["caption"]).to_dict() == shot["scene"]
    assert list(shards.iter_clips(sorted(map(str, paths))))[1]["key"] == "train-000000001"  # list input


def test_parallel_writers_write_the_same_clips(tmp_path):
    args = dict(num_clips=5, clips_per_shard=2, seed=2, split="heldout", frames=8, size=32, chunk_frames=2)
    one = shards.write_shards(tmp_path / "one", **args)
    two = shards.write_shards(tmp_path / "two", workers=2, **args)
    assert [p.name for p in one] == [p.name for p in two] and len(two) == 3
    for a, b in zip(shards.iter_clips(sorted(map(str, one))), shards.iter_clips(sorted(map(str, two))), strict=True):
        assert a["key"] == b["key"] and a["meta"] == b["meta"] and np.array_equal(a["video"], b["video"])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(["manifest.json", *(p.name for p in two)])


def test_switch_shots_are_marked(tmp_path):
    paths = shards.write_shards(tmp_path, num_clips=6, clips_per_shard=6, seed=1, split="train", frames=16,
                                size=32, max_shots=3, chunk_frames=2, switch_prob=1.0)
    metas = [s["meta"] for s in shards.iter_clips(str(paths[0]))]
    flags = [shot["switch"] for m in metas for shot in m["shots"]]
    assert flags.count(True) == len(flags) - len(metas) > 0  # every shot after the first is a switch
    assert all(len({shot["scene"]["color"] for shot in m["shots"]}) == 1 for m in metas)


def test_chunk_bounds_follow_the_causal_layout():
    assert shards.chunk_pixel_bounds(8, 2, 1) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert shards.chunk_pixel_bounds(13, 2, 4) == [(0, 5), (5, 13)]  # latents 0-1: 1 + 4 frames
    with pytest.raises(ConfigError, match="use e.g. 5, 13, 21"):
        shards.chunk_pixel_bounds(16, 2, 4)


def test_splits_have_disjoint_seeds():
    train = {shards.clip_seed(s, "train", i) for s in range(3) for i in range(50)}
    held = {shards.clip_seed(s, "heldout", i) for s in range(3) for i in range(50)}
    assert len(train) == len(held) == 150 and not train & held
    with pytest.raises(ConfigError, match="split='test'"):
        shards.clip_seed(0, "test", 0)


def test_bad_arguments_fail_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="whole number of chunks"):
        shards.write_shards(tmp_path / "x", 2, 2, 0, "train", frames=15, chunk_frames=4)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="no shard matches"):
        list(shards.iter_clips(str(tmp_path / "*.tar")))
