"""Training data: the "dataset" component protocol, a webdataset shard reader, the sample stream, batch encoding.

A "dataset" component is a factory `(run, train_config) -> Dataset`: `len(ds)` samples and
`ds[i]` -> {"video": uint8 [T, H, W, 3] (numpy or tensor) or float [3, T, H, W] in [-1, 1],
"prompts": one caption per chunk, "fps": float}, with T = the pixel frames of
train.num_frames latent frames. Items are deterministic (same i, same item).

`DataStream` decides which samples each rank reads: epoch e is a permutation of the dataset
drawn from (run.seed, e); a global batch takes the next batch_size x world_size positions, rank
r the r-th run of batch_size of them; the epoch's tail that cannot fill a global batch is
skipped. Its whole state is the number of positions consumed (`position`), so resuming is
exact and costs nothing. Each sample also gets a seed from (run.seed, position), from which the
objective draws its noise and timesteps: the draws do not depend on the number of ranks.

`BatchEncoder` turns items into a training batch: the codec encodes videos to latents
[B, C, F, H, W] and the text encoder embeds the B x n_chunks prompts in one call -> context
[B, n_chunks, L, D]; optionally both are cached in host memory by dataset index. With
`caption_dropout` p, a sample's context is replaced by that of the empty prompt (every chunk) when
a draw from the sample's seed falls below p, so a model can learn the unconditional prediction
that classifier-free guidance needs; the choice, like the noise, does not depend on the ranks.
With `i2v_probability` p > 0, a sample is image-conditioned (I2V) when another draw from its seed
falls below p: the batch then carries "clean_frames" [B, F] (bool), True at latent frame 0 of the
I2V samples. The image is the video's first pixel frame, which a causal codec encodes alone into
latent frame 0, so the I2V sample's length counts the image frame (no extra frame is added).

Corrupt samples: a dataset raises `CorruptSampleError` for a sample it cannot read or decode
(`ShardClipDataset` names the shard and key). `SkippingDataset` then serves the next readable
sample in dataset order instead (index + 1, + 2, ...), logs a warning with the shard and key and
counts it; more than `train.max_bad_samples` distinct corrupt samples stop the run with a
ConfigError. The substitute depends only on the data, so a resumed run reads what the
uninterrupted one read.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import attrs
import numpy as np
import torch
from einops import rearrange

from longlive.errors import ConfigError
from longlive.prompts import ChunkPrompt
from longlive.train.manifest import check_counts


if TYPE_CHECKING:
    from longlive.protocols import Codec, TextEncoder
    from longlive.run import RunContext
    from longlive.train.config import TrainConfig

log = logging.getLogger(__name__)


class Dataset(Protocol):
    """What a "dataset" component's factory returns (module docstring)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...


DatasetFactory = Callable[[Any, Any], Dataset]  # (run, train_config) -> Dataset


class CorruptSampleError(ConfigError):
    """One sample cannot be read or decoded; the message names where it lies (shard and key)."""


class SkippingDataset:
    """A dataset whose corrupt samples are replaced by the next readable one (module docstring)."""

    def __init__(self, dataset: Dataset, *, max_bad: int) -> None:
        self.dataset, self.max_bad = dataset, max_bad
        self.bad: dict[int, str] = {}  # dataset index -> why it was skipped

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        size = len(self.dataset)
        for k in range(size):
            i = (index + k) % size
            if i in self.bad:
                continue
            try:
                return self.dataset[i]
            except CorruptSampleError as e:
                self.bad[i] = str(e)
                log.warning("skipped corrupt sample %d (%d so far, limit train.max_bad_samples = %d): %s",
                            i, len(self.bad), self.max_bad, e)
                if len(self.bad) > self.max_bad:
                    raise ConfigError(f"train.max_bad_samples: {len(self.bad)} corrupt samples exceed the limit of "
                                      f"{self.max_bad} (last: {e}); repair or regenerate the data, or raise the "
                                      f"limit") from None
        raise ConfigError(f"train.data: none of the {size} samples is readable")


# ---- shards of uint8 video + json captions -------------------------------------------------


@attrs.frozen
class _Member:
    offset: int  # byte offset of the member's data in the tar file
    size: int


@attrs.frozen
class SampleRef:
    """Where one sample's video (.npy) and metadata (.json) lie inside a tar shard."""

    shard: str
    key: str
    video: _Member
    meta: _Member

    def read(self) -> tuple[np.ndarray, dict]:
        """The video and metadata; CorruptSampleError when either cannot be read or decoded."""
        where = f"sample {self.key!r} in {self.shard}"
        try:
            with open(self.shard, "rb") as f:
                f.seek(self.video.offset)
                video_bytes = f.read(self.video.size)
                f.seek(self.meta.offset)
                meta_bytes = f.read(self.meta.size)
        except OSError as e:
            raise CorruptSampleError(f"{where}: cannot be read ({e})") from None
        try:  # numpy calls any header it cannot parse "pickled data": say what it is instead
            video = np.load(io.BytesIO(video_bytes), allow_pickle=False)
        except (ValueError, EOFError) as e:
            raise CorruptSampleError(f"{where}: the video is not a valid .npy array ({type(e).__name__})") from None
        try:
            meta = json.loads(meta_bytes.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError
            raise CorruptSampleError(f"{where}: the metadata is not UTF-8 JSON ({str(e)[:120]})") from None
        if not isinstance(meta, dict):
            raise CorruptSampleError(f"{where}: the metadata is not a JSON object")
        return video, meta


def expand_pattern(pattern: str, *, where: str) -> list[str]:
    """Shard files named by a path with {a..b}/{x,y} braces and/or glob wildcards, sorted."""
    from braceexpand import braceexpand

    files = sorted({f for p in braceexpand(pattern) for f in (glob.glob(p) if glob.has_magic(p) else [p])})
    missing = [f for f in files if not os.path.isfile(f)]
    if not files or missing:
        raise ConfigError(f"{where}: no shard file matches {pattern!r}" if not files else
                          f"{where}: shard {missing[0]!r} does not exist (pattern {pattern!r}); "
                          f"paths are relative to the experiment file")
    return files


def index_shards(files: Sequence[str], *, where: str) -> list[SampleRef]:
    """Every complete sample (one .npy video + one .json) of the tar shards, in file order."""
    refs = []
    for path in files:
        members: dict[str, dict[str, _Member]] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for m in tar:
                    if m.isfile():
                        base = m.name.rsplit("/", 1)[-1]
                        key, _, ext = base.partition(".")
                        prefix = m.name[: len(m.name) - len(base)]
                        members.setdefault(prefix + key, {})[ext] = _Member(m.offset_data, m.size)
                rest = os.path.getsize(path) - tar.offset
        except tarfile.TarError as e:
            raise ConfigError(f"{where}: {path!r} is not a readable (uncompressed) tar shard: {e}") from None
        if rest > 2 * tarfile.RECORDSIZE:  # tarfile ends quietly at a damaged header: say so
            log.warning("%s: %s stops being readable at byte %d of %d; the samples after it are lost",
                        where, path, os.path.getsize(path) - rest, os.path.getsize(path))
        for key, parts in members.items():
            video = [m for ext, m in parts.items() if ext.endswith("npy")]
            if len(video) == 1 and "json" in parts:
                refs.append(SampleRef(path, key, video[0], parts["json"]))
            else:
                log.warning("%s: sample %r in %s lacks one .npy video and a .json; skipped", where, key, path)
    return refs


def frame_captions(meta: dict, num_pixel_frames: int, *, where: str) -> list[str]:
    """The caption of every pixel frame, from the sample's `prompt_schedule` [[start_frame, caption], ...]."""
    schedule = meta.get("prompt_schedule")
    if not schedule or int(schedule[0][0]) != 0:
        raise ConfigError(f"{where}: sample metadata needs prompt_schedule = [[0, caption], [start, caption], ...]; "
                          f"found keys {sorted(meta)}")
    out: list[str] = []
    bounds = [int(s) for s, _ in schedule[1:]] + [num_pixel_frames]
    for (_, caption), end in zip(schedule, bounds):
        out += [caption] * max(0, min(end, num_pixel_frames) - len(out))
    return out


def chunk_prompts(captions: Sequence[str], *, num_chunks: int, frames_per_chunk: int,
                  temporal_stride: int) -> list[str]:
    """One prompt per chunk: the caption of most of the chunk's pixel frames (ties: the earliest).

    Latent frame 0 holds pixel frame 0, latent j >= 1 holds pixels [1 + s(j-1), 1 + s j).
    """
    prompts = []
    for k in range(num_chunks):
        first, last = k * frames_per_chunk, (k + 1) * frames_per_chunk - 1
        start = 0 if first == 0 else 1 + temporal_stride * (first - 1)
        span = list(captions[start: 1 + temporal_stride * last])
        prompts.append(max(dict.fromkeys(span), key=span.count))
    return prompts


def chunk_shot_starts(cut_frames: Sequence[int], *, num_chunks: int, frames_per_chunk: int, temporal_stride: int,
                      max_chunks_per_shot: int = 0) -> list[bool]:
    """Per chunk, whether it starts a shot (chunk 0 always).

    A cut at pixel frame c starts the shot at the chunk whose pixel span holds c (a cut inside
    chunk 0 is none); with `max_chunks_per_shot` = N > 0, a shot longer than N chunks gets a
    virtual cut every N chunks.
    """
    starts = [k == 0 for k in range(num_chunks)]
    for c in cut_frames:
        for k in range(1, num_chunks):
            first, last = k * frames_per_chunk, (k + 1) * frames_per_chunk - 1
            if 1 + temporal_stride * (first - 1) <= int(c) < 1 + temporal_stride * last:
                starts[k] = True
    if max_chunks_per_shot:
        since = 0
        for k in range(num_chunks):
            since = 0 if starts[k] else since + 1
            if since == max_chunks_per_shot:
                starts[k], since = True, 0
    return starts


def conditioned_chunks(prompts: Sequence[str], shot_starts: Sequence[bool]) -> list[ChunkPrompt]:
    """The chunks of a sample as generation sees them: shot index, shot start, switch (a prompt
    change inside a shot)."""
    out, shot = [], -1
    for k, (prompt, start) in enumerate(zip(prompts, shot_starts)):
        shot += start
        switch = not start and prompt != prompts[k - 1]
        out.append(ChunkPrompt(index=k, prompt=prompt, shot_index=shot, shot_start=start, switch=switch))
    return out


class ShardClipDataset:
    """Multi-shot clips from webdataset tar shards: `<key>.npy` uint8 [T, H, W, 3] + `<key>.json`.

    The json holds "fps", "prompt_schedule" ([[start_frame, caption], ...] in pixel frames) and
    optionally "cut_frames" (pixel frames where a new shot starts; a caption change elsewhere is a
    prompt switch inside the shot). Items are the first `pixel_frames` frames of a clip, one
    conditioning text per chunk ("prompts": the chunk's caption, after `condition`, e.g. the
    scene-cut prefix on the first chunk of every later shot as in generation) and "shot_starts".
    """

    def __init__(self, refs: Sequence[SampleRef], *, num_frames: int, frames_per_chunk: int,
                 temporal_stride: int, where: str = "train.data", max_chunks_per_shot: int = 0,
                 condition: Callable[[ChunkPrompt], str] | None = None) -> None:
        if not refs:
            raise ConfigError(f"{where}: the shards hold no samples (each needs a .npy video and a .json)")
        self.refs, self.where = list(refs), where
        self.num_chunks = num_frames // frames_per_chunk
        self.frames_per_chunk, self.temporal_stride = frames_per_chunk, temporal_stride
        self.pixel_frames = 1 + temporal_stride * (num_frames - 1)
        self.max_chunks_per_shot = max_chunks_per_shot
        self.condition = condition

    @classmethod
    def from_config(cls, run: RunContext, config: TrainConfig) -> ShardClipDataset:
        from longlive.train.config import resolve_path

        codec = run.components.get("codec", run.experiment.model.codec, where="model.codec").value
        files = expand_pattern(resolve_path(config.data, run, "train.data"), where="train.data")
        refs = index_shards(files, where="train.data")
        check_counts(files, Counter(ref.shard for ref in refs), max_missing=config.max_bad_samples, where="train.data")
        log.info("dataset: %d samples in %d shards (%s)", len(refs), len(files), config.data)
        def condition(chunk: ChunkPrompt) -> str:  # the conditioning prefix role, as in generation (no state here)
            return (run.hook.longlive_prompt_prefix(chunk=chunk, state=None, run=run) or "") + chunk.prompt

        return cls(refs, num_frames=config.num_frames, frames_per_chunk=run.experiment.sampler.frames_per_chunk,
                   temporal_stride=codec.temporal_stride, max_chunks_per_shot=config.max_chunks_per_shot,
                   condition=condition)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> dict:
        ref = self.refs[index]
        video, meta = ref.read()
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise CorruptSampleError(f"{self.where}: sample {ref.key!r} in {ref.shard}: video must be uint8 "
                                     f"[T, H, W, 3]; got {video.dtype} {video.shape}")
        if video.shape[0] < self.pixel_frames:
            raise ConfigError(f"{self.where}: sample {ref.key!r} in {ref.shard} has {video.shape[0]} frames but "
                              f"train.num_frames needs {self.pixel_frames}; lower train.num_frames or use longer clips")
        try:
            captions = frame_captions(meta, self.pixel_frames, where=f"{self.where} ({ref.key})")
        except (ConfigError, TypeError, ValueError, IndexError) as e:
            raise CorruptSampleError(f"sample {ref.key!r} in {ref.shard}: bad prompt_schedule ({e})") from None
        prompts = chunk_prompts(captions, num_chunks=self.num_chunks, frames_per_chunk=self.frames_per_chunk,
                                temporal_stride=self.temporal_stride)
        try:
            starts = chunk_shot_starts(meta.get("cut_frames", []), num_chunks=self.num_chunks,
                                       frames_per_chunk=self.frames_per_chunk, temporal_stride=self.temporal_stride,
                                       max_chunks_per_shot=self.max_chunks_per_shot)
        except (TypeError, ValueError) as e:
            raise CorruptSampleError(f"sample {ref.key!r} in {ref.shard}: bad cut_frames ({e})") from None
        if self.condition is not None:
            prompts = [self.condition(chunk) for chunk in conditioned_chunks(prompts, starts)]
        return {"video": video[: self.pixel_frames], "prompts": prompts, "shot_starts": starts,
                "fps": float(meta.get("fps", 0.0))}


# ---- the sample stream -----------------------------------------------------------------


def sample_seed(seed: int, position: int) -> int:
    """The seed of the sample at stream `position` (63 bits, well mixed)."""
    a, b = np.random.SeedSequence([seed, position, 0x5EED]).generate_state(2, dtype=np.uint32)
    return (int(a) << 31) ^ int(b)


class DataStream:
    """Deterministic, resumable order of samples for one rank (module docstring)."""

    def __init__(self, size: int, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 position: int = 0) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        self.per_epoch = size // self.global_batch * self.global_batch
        if self.per_epoch == 0:
            raise ConfigError(f"train.batch_size: a global batch of {self.global_batch} (batch_size {batch_size} x "
                              f"{world_size} ranks) exceeds the {size} samples of the dataset; lower it")
        self.position = position
        self._perm: tuple[int, np.ndarray] | None = None

    @property
    def epoch(self) -> int:
        return self.position // self.per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
            self._perm = (epoch, rng.permutation(self.size))
        return self._perm[1]

    def next(self) -> tuple[list[int], list[int]]:
        """This rank's part of the next global batch: (dataset indices, sample seeds)."""
        perm, offset = self.permutation(self.epoch), self.position % self.per_epoch
        positions = range(self.position + self.rank * self.batch_size,
                          self.position + (self.rank + 1) * self.batch_size)
        indices = [int(perm[offset + p - self.position]) for p in positions]
        self.position += self.global_batch
        return indices, [sample_seed(self.seed, p) for p in positions]

    def state_dict(self) -> dict:
        return {"position": self.position, "global_batch": self.global_batch, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if (state["global_batch"], state["size"]) != (self.global_batch, self.size):
            raise ConfigError(f"resume: the checkpoint's data stream had a global batch of {state['global_batch']} "
                              f"over {state['size']} samples; this run has {self.global_batch} over {self.size}; "
                              f"resume with the same batch size, ranks and data")
        self.position = int(state["position"])


# ---- encoding ---------------------------------------------------------------------------


def video_to_float(video: Any) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [3, T, H, W] in [-1, 1]; float [3, T, H, W] passes through."""
    v = torch.as_tensor(video)
    if v.dtype == torch.uint8:
        return rearrange(v, "t h w c -> c t h w").float() / 127.5 - 1.0
    return v.float()


class BatchEncoder:
    """Items -> {"latents" [B, C, F, H, W] fp32, "context" [B, n, L, D] fp32, "seeds" [B], "prompts"}."""

    def __init__(self, codec: Codec, text_encoder: TextEncoder, *, device: torch.device, dtype: torch.dtype,
                 cache: bool = False, caption_dropout: float = 0.0, i2v_probability: float = 0.0,
                 encode_video: Callable[[Codec, torch.Tensor], torch.Tensor] | None = None) -> None:
        self.codec, self.text, self.device, self.dtype = codec, text_encoder, device, dtype
        # codec, pixels -> latents; a sequence layout's `encode_video` encodes only what its rank reads
        self.encode_video = encode_video if encode_video is not None else (lambda c, v: c.encode(v))
        self.caption_dropout, self.i2v_probability = caption_dropout, i2v_probability
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None
        self._empty: torch.Tensor | None = None  # the empty prompt's context [L, D], encoded once

    @torch.no_grad()
    def encode(self, items: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        video = torch.stack([video_to_float(it["video"]) for it in items])  # [B, 3, T, H, W]
        latents = self.encode_video(self.codec, video.to(self.device, self.dtype)).float()  # [B, C, F, h, w]
        n = {len(it["prompts"]) for it in items}
        if len(n) != 1:
            raise ConfigError(f"dataset items of one batch have different numbers of chunk prompts: {sorted(n)}")
        prompts = [p for it in items for p in it["prompts"]]
        context = self.text.encode(prompts).float()  # [B * n, L, D]
        return latents, rearrange(context, "(b n) l d -> b n l d", b=len(items))

    def __call__(self, dataset: Dataset, indices: Sequence[int], seeds: Sequence[int]) -> dict:
        if self._cache is None:
            latents, context = self.encode([dataset[i] for i in indices])
        else:
            todo = [i for i in dict.fromkeys(indices) if i not in self._cache]
            if todo:
                lat, ctx = self.encode([dataset[i] for i in todo])
                self._cache.update({i: (lat[k].cpu(), ctx[k].cpu()) for k, i in enumerate(todo)})
            latents = torch.stack([self._cache[i][0] for i in indices]).to(self.device)
            context = torch.stack([self._cache[i][1] for i in indices]).to(self.device)
        if self.caption_dropout > 0.0:
            context = self._drop_captions(context, seeds)
        batch = {"latents": latents, "context": context, "seeds": torch.tensor(seeds, dtype=torch.long)}
        if self.i2v_probability > 0.0:
            batch["clean_frames"] = self.clean_frames(seeds, latents.shape[2], latents.device)
        return batch

    def clean_frames(self, seeds: Sequence[int], frames: int, device: torch.device) -> torch.Tensor:
        """[B, F] bool: latent frame 0 of the samples whose seed draws I2V (below i2v_probability)."""
        i2v = [np.random.default_rng([int(seed), 11]).random() < self.i2v_probability for seed in seeds]
        clean = torch.zeros(len(seeds), frames, dtype=torch.bool, device=device)
        clean[:, 0] = torch.tensor(i2v, dtype=torch.bool, device=device)
        return clean

    @torch.no_grad()
    def encode_prompts(self, dataset: Dataset, indices: Sequence[int], seeds: Sequence[int], *,
                       first_frame: bool = False) -> dict:
        """Text only, for algorithms that generate their own videos (DMD): {"context" [B, n, L, D],
        "seeds" [B]}, plus with `first_frame` the latent of each video's first frame, "image"
        [B, C, 1, h, w] (I2V; a causal codec encodes the first frame alone). No video is encoded
        otherwise; captions are dropped as in `__call__`."""
        items = [dataset[i] for i in indices]
        n = {len(it["prompts"]) for it in items}
        if len(n) != 1:
            raise ConfigError(f"dataset items of one batch have different numbers of chunk prompts: {sorted(n)}")
        context = self.text.encode([p for it in items for p in it["prompts"]]).float()  # [B * n, L, D]
        context = rearrange(context, "(b n) l d -> b n l d", b=len(items))
        if self.caption_dropout > 0.0:
            context = self._drop_captions(context, seeds)
        out = {"context": context, "seeds": torch.tensor(seeds, dtype=torch.long)}
        if first_frame:
            if any("video" not in it for it in items):
                raise ConfigError("the first frame (I2V) needs videos; this dataset has captions only "
                                  "(train.dataset = \"prompts\"): use video shards")
            video = torch.stack([video_to_float(it["video"])[:, :1] for it in items])  # [B, 3, 1, H, W]
            out["image"] = self.codec.encode(video.to(self.device, self.dtype)).float()
        return out

    def _drop_captions(self, context: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """context [B, n, L, D] with the samples whose seed draws below caption_dropout unconditioned."""
        drop = [np.random.default_rng([int(seed), 7]).random() < self.caption_dropout for seed in seeds]
        if not any(drop):
            return context
        if self._empty is None:
            with torch.no_grad():
                self._empty = self.text.encode([""]).float()[0].to(context.device)  # [L, D]
        keep = torch.tensor([not d for d in drop], device=context.device).view(-1, 1, 1, 1)
        return torch.where(keep, context, self._empty)
