"""The streaming generator: the chunk loop as an explicit state machine.

One `ChunkLoop` owns the state of a generation (cache, prompt embeddings, the chunk counter)
and advances it one chunk per `step()`:

    live prompt (`longlive_next_prompt`) -> events (shot start / prompt switch hooks)
    -> conditioning text (`longlive_prompt_prefix` + prompt) -> plan (cache.begin)
    -> denoise k steps -> clean context pass at t=0 -> commit (cache.commit) -> chunk done

The caller hands the returned latents to a decoder (longlive/assembly.py: `render`).

Generation, evaluation during training and the DMD rollout use the same loop, and the same
sampler objects. The model never mutates the cache's visible state: only `commit` does.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import attrs
import torch

from longlive.cache import ChunkKV, KVCache
from longlive.prompts import ChunkPrompt

if TYPE_CHECKING:
    from longlive.model.dit import WanDiT
    from longlive.run import RunContext
    from longlive.sampling import Sampler

log = logging.getLogger(__name__)

TextFn = Callable[[list[str]], torch.Tensor]  # prompts -> [B, text_len, text_dim]


@attrs.define(kw_only=True)
class GenerationState:
    """Everything that changes while a video is generated; plugins receive it in events."""

    model: WanDiT
    cache: KVCache
    sampler: Sampler
    encode_text: TextFn
    batch: int
    guidance: float = 1.0
    negative_prompt: str = ""
    image_latent: torch.Tensor | None = None  # I2V: [B, C, 1, H, W], replaces frame 0 at t=0
    chunk_index: int = 0
    prompt: str | None = None  # the prompt in force (without any conditioning prefix)
    _embedded: dict[str, torch.Tensor] = attrs.field(factory=dict)

    @property
    def cfg(self) -> bool:
        return self.guidance != 1.0

    def context(self, prompt: str) -> torch.Tensor:
        """Embedded text for `prompt` (with the negative prompt stacked after it under CFG).

        Only the latest text is kept: a prefixed first chunk of a shot and the chunks after it
        embed twice, which costs one text-encoder call per shot."""
        if prompt not in self._embedded:
            prompts = [prompt] * self.batch + ([self.negative_prompt] * self.batch if self.cfg else [])
            self._embedded.clear()  # one prompt at a time: switches re-embed, memory stays bounded
            self._embedded[prompt] = self.model.embed_text(self.encode_text(prompts))
        return self._embedded[prompt]


class ChunkLoop:
    """Advance a GenerationState chunk by chunk; `step(chunk, noise)` returns the clean latents."""

    def __init__(self, state: GenerationState, hook: Any, run: RunContext) -> None:
        self.state, self.hook, self.run = state, hook, run  # hook: the plugin manager's hook relay

    def step(self, chunk: ChunkPrompt, noise: torch.Tensor) -> torch.Tensor:
        """Generate chunk `chunk.index` from `noise` [B, C, f, H, W]; returns x0 of the same shape."""
        state, hook, run = self.state, self.hook, self.run
        state.chunk_index = chunk.index
        chunk = self._live_prompt(chunk)
        if chunk.shot_start:
            hook.longlive_shot_start(shot_index=chunk.shot_index, chunk_index=chunk.index, state=state, run=run)
        if chunk.switch:
            hook.longlive_prompt_switch(chunk_index=chunk.index, prompt=chunk.prompt, state=state, run=run)
        state.prompt = chunk.prompt
        prefix = hook.longlive_prompt_prefix(chunk=chunk, state=state, run=run)
        context = state.context((prefix or "") + chunk.prompt)
        kv = state.cache.begin(chunk.index)
        x0 = self.denoise(noise, context, kv)
        self.commit(x0, context, kv)
        hook.longlive_chunk_done(index=chunk.index, latents=x0, state=state, run=run)
        return x0

    def used_prompt(self, chunk: ChunkPrompt) -> ChunkPrompt:
        """`chunk` with the prompt that was in force when it was generated (a live source may differ)."""
        return attrs.evolve(chunk, prompt=self.state.prompt)

    def _live_prompt(self, chunk: ChunkPrompt) -> ChunkPrompt:
        """A live prompt source may replace the scheduled prompt; a change inside a shot is a switch."""
        live = self.hook.longlive_next_prompt(chunk=chunk, state=self.state, run=self.run)
        if self.hook.longlive_next_prompt.get_hookimpls():  # a live source: one answer for every rank of an SP group
            live = self.state.cache.spec.layout.agree(live)
        prompt = chunk.prompt if live is None else live
        switched = not chunk.shot_start and self.state.prompt is not None and prompt != self.state.prompt
        return attrs.evolve(chunk, prompt=prompt, switch=switched)

    def denoise(self, noise: torch.Tensor, context: torch.Tensor, kv: ChunkKV) -> torch.Tensor:
        state = self.state
        traj = state.sampler.start(noise)
        while not traj.done:
            x, t = self._model_input(traj.sample, traj.timestep)
            traj.step(self._velocity(x, t, context, kv))
        return self._impose_image(traj.x0)

    def commit(self, x0: torch.Tensor, context: torch.Tensor, kv: ChunkKV) -> None:
        """Clean context pass at t=0 (writes clean K/V into the chunk's slot), then commit."""
        state = self.state
        kv = state.cache.context(kv)  # the policy may narrow what the clean pass sees (a cut clearing the window)
        x, t = self._model_input(x0, 0.0)
        state.model.forward_chunk(self._cfg_batch(x), self._cfg_batch(t), context, text_embedded=True, kv=kv)
        state.cache.commit(kv)

    def _model_input(self, x: torch.Tensor, timestep: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents and per-frame timesteps [B, f]; I2V pins frame 0 of chunk 0 to the image at t=0."""
        t = torch.full((x.shape[0], x.shape[2]), float(timestep), device=x.device, dtype=torch.float32)
        if self.state.image_latent is not None and self.state.chunk_index == 0:
            x = torch.cat([self.state.image_latent.to(x), x[:, :, 1:]], dim=2)
            t[:, 0] = 0.0
        return x, t

    def _impose_image(self, x0: torch.Tensor) -> torch.Tensor:
        if self.state.image_latent is not None and self.state.chunk_index == 0:
            x0 = torch.cat([self.state.image_latent.to(x0), x0[:, :, 1:]], dim=2)
        return x0

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, kv: ChunkKV) -> torch.Tensor:
        state = self.state
        v = state.model.forward_chunk(self._cfg_batch(x), self._cfg_batch(t), context, text_embedded=True, kv=kv)
        if not state.cfg:
            return v
        cond, uncond = v.chunk(2)
        return uncond + state.guidance * (cond - uncond)

    def _cfg_batch(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x]) if self.state.cfg else x


def chunk_noise(shape: tuple[int, ...], chunk_index: int, seed: int, device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
    """Noise of one chunk, drawn on `device` from (seed, chunk): reproducible, no host transfer."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + chunk_index)
    return torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)

