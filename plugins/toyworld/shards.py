"""Toy-world webdataset shards: rendered multi-shot clips with per-chunk captions.

Each sample is `<key>.video.npy` (uint8 [T, H, W, 3], exact) and `<key>.json` (fps, the prompt
schedule in pixel frames, per-chunk captions, shot boundaries in frames and chunks, the clip seed
and the structured scenes; a shot marked `switch` continues the previous shot's object with a
new motion, see `world.sample_clip`). Shards are plain (uncompressed) tars, so readers can seek to members.
Cuts fall on chunk boundaries. A chunk is `chunk_frames` latent frames; with codec temporal
factor tau the first latent is 1 pixel frame and every later one tau (the Wan causal layout).

Splits use disjoint clip seeds: clip i of split s under base seed b has seed
2 * (b * 10**9 + i) + (0 for train, 1 for heldout), so train and heldout never share a clip.

Written by the `toy_data` task: `python -m longlive run experiments/toy/data.toml`.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from longlive.errors import ConfigError
from longlive.train.manifest import update_manifest
from longlive_plugins.toyworld.world import sample_clip

log = logging.getLogger(__name__)

SPLITS = ("train", "heldout")
_MAX_CLIPS = 10**9  # clips per (seed, split); keeps clip seeds of different base seeds apart


def clip_seed(seed: int, split: str, index: int) -> int:
    """The seed of clip `index` of `split`; train seeds are even, heldout seeds odd."""
    if split not in SPLITS:
        raise ConfigError(f"toyworld shards: split={split!r} is not known; use one of {', '.join(SPLITS)}")
    if seed < 0 or not 0 <= index < _MAX_CLIPS:
        raise ConfigError(f"toyworld shards: need seed >= 0 and 0 <= index < {_MAX_CLIPS}; got {seed}, {index}")
    return 2 * (seed * _MAX_CLIPS + index) + SPLITS.index(split)


def latent_start(latent: int, temporal_factor: int) -> int:
    """First pixel frame of latent frame `latent` (latent 0 holds frame 0 alone)."""
    return 0 if latent == 0 else 1 + temporal_factor * (latent - 1)


def chunk_pixel_bounds(frames: int, chunk_frames: int, temporal_factor: int) -> list[tuple[int, int]]:
    """[(start, end)] pixel frames of each chunk of a `frames`-frame clip; chunks must fit exactly."""
    tau = temporal_factor
    latents = frames if tau == 1 else (frames - 1) // tau + 1
    if chunk_frames < 1 or frames < 1 or latent_start(latents, tau) != frames or latents % chunk_frames:
        ok = [latent_start(k * chunk_frames, tau) for k in range(1, 4)]
        raise ConfigError(f"toyworld shards: frames={frames} is not a whole number of chunks of {chunk_frames} "
                          f"latent frames (temporal factor {tau}); use e.g. {', '.join(map(str, ok))}, ...")
    starts = [latent_start(c * chunk_frames, tau) for c in range(latents // chunk_frames)]
    return list(zip(starts, starts[1:] + [frames]))


def clip_sample(seed: int, split: str, index: int, *, frames: int, size: int, fps: float, max_shots: int,
                chunk_frames: int, temporal_factor: int, switch_prob: float = 0.0) -> dict:
    """One webdataset sample (key, npy bytes, json metadata) of a freshly rendered clip."""
    cseed = clip_seed(seed, split, index)
    chunks = chunk_pixel_bounds(frames, chunk_frames, temporal_factor)
    rng = np.random.default_rng([cseed, 1])  # a stream apart from the clip's own
    num_shots = int(rng.integers(1, min(max_shots, len(chunks)) + 1))
    clip = sample_clip(cseed, num_shots=num_shots, frames=frames, size=size, fps=fps,
                       cut_candidates=[a for a, _ in chunks[1:]], min_shot_frames=1, switch_prob=switch_prob)
    chunk_starts = [a for a, _ in chunks]
    shots = [dict(start_frame=s.start_frame, num_frames=s.num_frames, start_chunk=chunk_starts.index(s.start_frame),
                  caption=s.caption, scene=s.scene.to_dict(), switch=s.switch) for s in clip.shots]
    captions = clip.frame_captions()
    meta = dict(
        key=f"{split}-{index:09d}", split=split, index=index, seed=cseed, fps=fps, size=size, num_frames=frames,
        prompt_schedule=[[a, c] for a, c in clip.prompt_schedule()], shots=shots,
        cut_frames=clip.cut_frames, cut_chunks=[s["start_chunk"] for s in shots[1:]],
        chunk_frames=chunk_frames, temporal_factor=temporal_factor,
        image_frame=0,  # every clip is also an I2V sample: its image is frame 0 (latent frame 0, encoded alone)
        chunk_pixel_frames=[list(c) for c in chunks], chunk_captions=[captions[a] for a, _ in chunks])
    buf = io.BytesIO()
    np.save(buf, clip.video, allow_pickle=False)
    return {"__key__": meta["key"], "video.npy": buf.getvalue(), "json": json.dumps(meta).encode("utf-8")}


def write_shards(out_dir: str | Path, num_clips: int, clips_per_shard: int, seed: int, split: str, frames: int, *,
                 size: int = 64, fps: float = 8.0, max_shots: int = 3, chunk_frames: int = 4,
                 temporal_factor: int = 1, workers: int = 1, switch_prob: float = 0.0) -> list[Path]:
    """Render `num_clips` clips into `{split}-NNNNNN.tar` shards under `out_dir`; returns the paths.

    Each shard is written to a temporary name and renamed when complete, so a shard file that
    exists is always whole. `out_dir/manifest.json` lists the shards with their sample counts
    once all are written (longlive/train/manifest.py); training checks the shards against it, so
    the shards of a writer killed midway are reported as unlisted. `workers` > 1 writes shards
    in that many processes; every clip comes from its own seed, so the shards hold the same clips
    either way.
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    if num_clips < 1 or clips_per_shard < 1 or max_shots < 1 or workers < 1:
        raise ConfigError(f"toyworld shards: need num_clips, clips_per_shard, max_shots, workers >= 1; got "
                          f"{num_clips}, {clips_per_shard}, {max_shots}, {workers}")
    chunk_pixel_bounds(frames, chunk_frames, temporal_factor)  # fail before writing anything
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clip_args = dict(frames=frames, size=size, fps=fps, max_shots=max_shots, chunk_frames=chunk_frames,
                     temporal_factor=temporal_factor, switch_prob=switch_prob)
    jobs = [(out_dir / f"{split}-{shard:06d}.tar", seed, split, range(first, min(first + clips_per_shard, num_clips)),
             clip_args) for shard, first in enumerate(range(0, num_clips, clips_per_shard))]
    stale = [p.name for p in out_dir.glob(f"{split}-*.tar")]
    update_manifest(out_dir, remove=stale)  # a run killed midway leaves shards the manifest does not list
    with tqdm(total=num_clips, desc=f"toy shards {split}", unit="clip", disable=None) as bar:
        if workers == 1:
            for job in jobs:
                bar.update(_write_shard(*job))
        else:
            with ProcessPoolExecutor(workers) as pool:
                for done in pool.map(_write_shard, *zip(*jobs)):
                    bar.update(done)
    update_manifest(out_dir, add={job[0].name: len(job[3]) for job in jobs})
    paths = [job[0] for job in jobs]
    log.info("toyworld: wrote %d %s clips in %d shards to %s", num_clips, split, len(paths), out_dir)
    return paths


def _write_shard(path: Path, seed: int, split: str, indices: range, clip_args: dict) -> int:
    """Write clips `indices` to the shard `path` (via a temporary name); returns how many."""
    import webdataset as wds

    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        writer = wds.TarWriter(f)
        for index in indices:
            writer.write(clip_sample(seed, split, index, **clip_args))
        writer.close()
    os.replace(tmp, path)
    return len(indices)


def iter_clips(pattern: str | Path | Sequence[str | Path]) -> Iterator[dict]:
    """Yield {"key", "video" uint8 [T, H, W, 3], "meta" dict} from shards.

    `pattern` is a path with {a..b} braces or glob wildcards, or a list of paths.
    """
    import webdataset as wds

    if isinstance(pattern, (str, Path)):
        urls = sorted(glob.glob(str(pattern))) if glob.has_magic(str(pattern)) else str(pattern)
    else:
        urls = [str(p) for p in pattern]
    if not urls:
        raise ConfigError(f"toyworld shards: no shard matches {pattern!r}")
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        video = np.load(io.BytesIO(sample["video.npy"]), allow_pickle=False)
        yield {"key": sample["__key__"], "video": video, "meta": json.loads(sample["json"])}
