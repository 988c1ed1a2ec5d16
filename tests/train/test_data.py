"""Training data: shard reading, per-chunk prompts, the resumable stream, batch encoding."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from longlive.errors import ConfigError
from longlive.train.data import (BatchEncoder, DataStream, ShardClipDataset, chunk_prompts, chunk_shot_starts,
                                 conditioned_chunks, expand_pattern, frame_captions, index_shards)


def test_chunk_prompts_follow_the_wan_causal_layout():
    # stride 4: latent 0 = pixel 0, latent j = pixels 1+4(j-1) .. 4j; chunks of 2 latents
    captions = ["a"] * 5 + ["b"] * 8 + ["c"] * 4  # 17 pixel frames = 5 latents
    assert chunk_prompts(captions[:13], num_chunks=2, frames_per_chunk=2, temporal_stride=4) == ["a", "b"]
    # a chunk split 2:1 between captions takes the majority; a tie takes the earlier
    assert chunk_prompts(["a", "a", "b"], num_chunks=1, frames_per_chunk=3, temporal_stride=1) == ["a"]
    assert chunk_prompts(["a", "b"], num_chunks=1, frames_per_chunk=2, temporal_stride=1) == ["a"]


def test_frame_captions_from_the_prompt_schedule():
    meta = {"prompt_schedule": [[0, "x"], [3, "y"]]}
    assert frame_captions(meta, 5, where="t") == ["x", "x", "x", "y", "y"]
    with pytest.raises(ConfigError, match="prompt_schedule"):
        frame_captions({"captions": []}, 5, where="t")


def test_shards_read_back_the_clips(toy_shards):
    from longlive_plugins.toyworld.shards import iter_clips

    files = expand_pattern(toy_shards, where="train.data")
    assert len(files) == 2
    refs = index_shards(files, where="train.data")
    ds = ShardClipDataset(refs, num_frames=4, frames_per_chunk=2, temporal_stride=1)
    assert len(ds) == 8
    clips = list(iter_clips(files))  # the writer's own reader
    for i in (0, 5):
        item = ds[i]
        assert (item["video"] == clips[i]["video"][:4]).all() and item["fps"] == clips[i]["meta"]["fps"]
        assert item["prompts"] == clips[i]["meta"]["chunk_captions"][:2]  # written for 2-frame chunks too
    with pytest.raises(ConfigError, match="does not exist"):
        expand_pattern(toy_shards.replace("train-", "nothing-"), where="train.data")
    with pytest.raises(ConfigError, match="no shard file matches"):
        expand_pattern(str(Path(toy_shards).parent / "nothing-*.tar"), where="train.data")


def test_a_three_shot_sample_has_per_chunk_prompts_cuts_and_the_scene_cut_prefix():
    # stride 4, chunks of 2 latents = pixels [0, 5), [5, 13), [13, 21), [21, 29), [29, 37), [37, 45)
    meta = {"prompt_schedule": [[0, "red circle"], [13, "blue square"], [21, "blue square turns"],
                                [29, "green triangle"]],
            "cut_frames": [13, 29]}  # frame 21 is a prompt switch inside shot 1
    pixels = 1 + 4 * (12 - 1)
    prompts = chunk_prompts(frame_captions(meta, pixels, where="t"), num_chunks=6, frames_per_chunk=2,
                            temporal_stride=4)
    starts = chunk_shot_starts(meta["cut_frames"], num_chunks=6, frames_per_chunk=2, temporal_stride=4)
    assert prompts == ["red circle", "red circle", "blue square", "blue square turns", "green triangle",
                       "green triangle"]
    assert starts == [True, False, True, False, True, False]
    chunks = conditioned_chunks(prompts, starts)
    assert [c.shot_index for c in chunks] == [0, 0, 1, 1, 2, 2]
    assert [c.switch for c in chunks] == [False, False, False, True, False, False]

    from longlive_plugins.attn_sink.plugin import AttnSink, AttnSinkConfig  # the prefix as generation applies it

    sink = AttnSink(AttnSinkConfig(scene_cut_prefix="[cut] "))
    texts = [(sink.longlive_prompt_prefix(chunk=c) or "") + c.prompt for c in chunks]
    assert texts == ["red circle", "red circle", "[cut] blue square", "blue square turns", "[cut] green triangle",
                     "green triangle"]
    # virtual cuts: a shot longer than 2 chunks is cut every 2 chunks; a cut inside chunk 0 is none
    assert chunk_shot_starts([3], num_chunks=5, frames_per_chunk=2, temporal_stride=4,
                             max_chunks_per_shot=2) == [True, False, True, False, True]


def test_shard_items_carry_shot_starts_and_conditioned_prompts(toy_shards):
    from longlive_plugins.toyworld.shards import iter_clips

    files = expand_pattern(toy_shards, where="train.data")
    refs = index_shards(files, where="train.data")
    ds = ShardClipDataset(refs, num_frames=8, frames_per_chunk=1, temporal_stride=1,
                          condition=lambda c: ("CUT " if c.shot_start and c.shot_index else "") + c.prompt)
    clips, cuts = list(iter_clips(files)), 0
    for i in range(len(ds)):
        item, meta = ds[i], clips[i]["meta"]
        want = [k > 0 and k in meta["cut_frames"] for k in range(8)]  # 1-frame chunks, stride 1: chunk k = frame k
        assert item["shot_starts"] == [True] + want[1:]
        assert [p.startswith("CUT ") for p in item["prompts"]] == want
        cuts += sum(want)
    assert cuts > 0  # the fixture's clips cut


def test_stream_is_deterministic_resumable_and_split_over_ranks():
    single = DataStream(10, batch_size=4, seed=1)
    steps = [single.next() for _ in range(5)]  # 2 global batches per epoch (tail of 2 skipped)
    epoch0 = steps[0][0] + steps[1][0]
    assert len(set(epoch0)) == 8 and single.epoch == 2
    assert steps[2][0] + steps[3][0] != epoch0  # a new permutation per epoch
    resumed = DataStream(10, batch_size=4, seed=1)
    resumed.load_state_dict({"position": 12, "global_batch": 4, "size": 10})
    assert resumed.next() == steps[3]
    ranks = [DataStream(10, batch_size=2, seed=1, rank=r, world_size=2) for r in range(2)]
    for s in range(5):
        parts = [r.next() for r in ranks]
        assert parts[0][0] + parts[1][0] == steps[s][0] and parts[0][1] + parts[1][1] == steps[s][1]
    with pytest.raises(ConfigError, match="global batch"):
        resumed.load_state_dict({"position": 0, "global_batch": 8, "size": 10})
    with pytest.raises(ConfigError, match="exceeds"):
        DataStream(3, batch_size=2, seed=0, world_size=2)


class _Codec:
    def encode(self, video):
        return video[:, :1].repeat(1, 2, 1, 1, 1) * 2  # [B, 2, T, H, W]


class _Text:
    def __init__(self):
        self.calls = 0

    def encode(self, prompts):
        self.calls += 1
        return torch.stack([torch.full((3, 4), float(len(p))) for p in prompts])  # [N, 3, 4]


class _Items:
    def __init__(self):
        self.reads = 0

    def __len__(self):
        return 4

    def __getitem__(self, i):
        self.reads += 1
        video = torch.full((2, 2, 2, 3), 255 * (i % 2), dtype=torch.uint8)  # [T, H, W, 3]
        return {"video": video, "prompts": ["a" * (i + 1), "b"], "fps": 8.0}


@pytest.mark.parametrize("cache", [False, True])
def test_batch_encoder_layouts_and_cache(cache):
    items, text = _Items(), _Text()
    enc = BatchEncoder(_Codec(), text, device=torch.device("cpu"), dtype=torch.float32, cache=cache)
    batch = enc(items, [1, 2], [7, 8])
    assert batch["latents"].shape == (2, 2, 2, 2, 2) and batch["context"].shape == (2, 2, 3, 4)
    assert torch.equal(batch["latents"][0], torch.full((2, 2, 2, 2), 2.0))  # uint8 255 -> +1 -> codec x2
    assert torch.equal(batch["latents"][1], torch.full((2, 2, 2, 2), -2.0))
    assert batch["context"][0, 0, 0, 0] == 2 and batch["context"][1, 0, 0, 0] == 3 and batch["context"][1, 1, 0, 0] == 1
    assert batch["seeds"].tolist() == [7, 8]
    again = enc(items, [2, 1], [9, 9])
    assert torch.equal(again["latents"][0], batch["latents"][1])
    assert torch.equal(again["context"][1], batch["context"][0])
    assert items.reads == (2 if cache else 4)


@pytest.mark.parametrize("cache", [False, True])
def test_caption_dropout_follows_the_sample_seeds(cache):
    items, text = _Items(), _Text()
    empty = text.encode([""])[0]  # [L, D]
    plain = BatchEncoder(_Codec(), text, device=torch.device("cpu"), dtype=torch.float32)(items, [0, 1, 2, 3],
                                                                                          [10, 11, 12, 13])
    for p, want in ((0.0, [False] * 4), (1.0, [True] * 4)):
        enc = BatchEncoder(_Codec(), text, device=torch.device("cpu"), dtype=torch.float32, cache=cache,
                           caption_dropout=p)
        batch = enc(items, [0, 1, 2, 3], [10, 11, 12, 13])
        assert [bool((batch["context"][b] == empty).all()) for b in range(4)] == want
        assert torch.equal(batch["latents"], plain["latents"])  # only the text is dropped
    half = BatchEncoder(_Codec(), text, device=torch.device("cpu"), dtype=torch.float32, cache=cache,
                        caption_dropout=0.5)
    seeds = list(range(100, 140))
    first = half(items, [i % 4 for i in range(40)], seeds)["context"]
    dropped = [bool((first[b] == empty).all()) for b in range(40)]
    assert 8 <= sum(dropped) <= 32  # about half
    again = half(items, [i % 4 for i in range(40)][::-1], seeds[::-1])["context"]  # other order, same seeds
    assert [bool((again[b] == empty).all()) for b in range(40)] == dropped[::-1]
