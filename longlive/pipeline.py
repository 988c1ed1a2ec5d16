"""The streaming generator: the chunk loop as an explicit state machine.

One `ChunkLoop` owns the state of a generation (cache, prompt embeddings, the chunk counter)
and advances it one chunk per `step()`:

    live prompt (`longlive_next_prompt`) -> events (shot start / prompt switch hooks)
    -> conditioning text (`longlive_prompt_prefix` + prompt) -> plan (cache.begin)
    -> denoise k steps -> clean context pass at t=0 -> commit (cache.commit) -> chunk done

The caller hands the returned latents to a decoder (longlive/assembly.py: `render`).

Generation, evaluation during training and the DMD rollout use the same loop, and the same
sampler objects. The model never mutates the cache's visible state: only `commit` does.

Rollout control (training: DMD's backward simulation, LongLive 2.0 §6.5). `rollout` generates
a whole video chunk by chunk with the inference sampler, per-sample prompts ([B, L, D] text per
chunk) and shot cuts (shot-start events where the caption changes). Each chunk stops at an exit
step e (0-based, drawn by `RolloutPlan.draw` from (run seed, training step): the same on every
rank without communication): steps 0..e-1 run without gradients, step e runs with gradients
only when the chunk carries loss (chunk >= `loss_from_chunk`), and the chunk's output is that
step's x0 estimate (UniPC's data prediction). The clean context pass at t=0 that commits the
chunk to the cache always runs without gradients, as in inference.
"""
from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, Callable

import attrs
import torch

from longlive.cache import ChunkKV, KVCache
from longlive.prompts import ChunkPrompt, NewShot

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
    chunk: ChunkPrompt | None = None  # the chunk being generated, as a live source made it (prompt, shot, events)
    live_cuts: int = 0  # shots a live source started (NewShot): later shot indices count them
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
        state.prompt, state.chunk = chunk.prompt, chunk
        prefix = hook.longlive_prompt_prefix(chunk=chunk, state=state, run=run)
        context = state.context((prefix or "") + chunk.prompt)
        kv = state.cache.begin(chunk.index)
        x0 = self.denoise(noise, context, kv)
        self.commit(x0, context, kv)
        hook.longlive_chunk_done(index=chunk.index, latents=x0, state=state, run=run)
        return x0

    def used_prompt(self, chunk: ChunkPrompt) -> ChunkPrompt:
        """`chunk` as it was generated: the prompt in force, and the shot events a live source may have added."""
        used = self.state.chunk
        return used if used is not None and used.index == chunk.index else attrs.evolve(chunk, prompt=self.state.prompt)

    def _live_prompt(self, chunk: ChunkPrompt) -> ChunkPrompt:
        """A live prompt source may replace the scheduled prompt; a change inside a shot is a switch, and a
        `NewShot` answer a cut (a shot start; every later shot index counts it)."""
        state = self.state
        live = self.hook.longlive_next_prompt(chunk=chunk, state=state, run=self.run)
        if self.hook.longlive_next_prompt.get_hookimpls():  # a live source: one answer for every rank of an SP group
            live = state.cache.spec.layout.agree(live)
        if isinstance(live, NewShot):
            if not chunk.shot_start and chunk.index > 0:
                state.live_cuts += 1
                chunk = attrs.evolve(chunk, shot_start=True)
            live = live.prompt
        prompt = chunk.prompt if live is None else live
        switched = not chunk.shot_start and state.prompt is not None and prompt != state.prompt
        return attrs.evolve(chunk, prompt=prompt, switch=switched, shot_index=chunk.shot_index + state.live_cuts)

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

    def rollout_chunk(self, index: int, noise: torch.Tensor, context: torch.Tensor, *, exit_step: int,
                      grad: bool, shot_start: bool = False, shot_index: int = 0) -> torch.Tensor:
        """One chunk of a training rollout (module docstring): `context` [B, L, D] text-encoder output
        (one prompt per sample), stop at `exit_step`; returns that step's x0 [B, C, f, H, W]."""
        state, hook, run = self.state, self.hook, self.run
        if state.cfg:
            raise ValueError("a training rollout runs the student without classifier-free guidance (guidance 1)")
        steps = len(state.sampler.timesteps)
        if not 0 <= exit_step < steps:
            raise ValueError(f"exit_step {exit_step} is outside the sampler's {steps} steps")
        state.chunk_index = index
        if shot_start:
            hook.longlive_shot_start(shot_index=shot_index, chunk_index=index, state=state, run=run)
        kv = state.cache.begin(index)
        traj = state.sampler.start(noise)
        with torch.no_grad():
            embedded = state.model.embed_text(context)
            for _ in range(exit_step):
                x, t = self._model_input(traj.sample, traj.timestep)
                traj.step(self._velocity(x, t, embedded, kv))
        with torch.set_grad_enabled(grad):
            live = state.model.embed_text(context) if grad else embedded
            x, t = self._model_input(traj.sample, traj.timestep)
            traj.step(self._velocity(x, t, live, kv))
            x0 = self._impose_image(traj.x0)
        with torch.no_grad():
            self.commit(x0.detach(), embedded, kv)
        return x0

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


@attrs.frozen(kw_only=True)
class RolloutPlan:
    """Where a training rollout stops and which chunks carry gradients (module docstring)."""

    exit_steps: tuple[int, ...]  # one per chunk, each in [0, sampler steps)
    loss_from_chunk: int = 0  # chunks before it run entirely without gradients

    @classmethod
    def draw(cls, *, steps: int, chunks: int, seed: int, step: int, same_across_chunks: bool = True,
             loss_from_chunk: int = 0) -> RolloutPlan:
        """Exit steps drawn uniformly from (seed, training step): identical on every rank and on a resume."""
        rng = random.Random(seed * 1_000_003 + step)
        first = rng.randrange(steps)
        exits = [first] * chunks if same_across_chunks else [rng.randrange(steps) for _ in range(chunks)]
        return cls(exit_steps=tuple(exits), loss_from_chunk=loss_from_chunk)


def rollout(loop: ChunkLoop, noise: list[torch.Tensor], contexts: list[torch.Tensor], plan: RolloutPlan,
            *, grad: bool = True) -> torch.Tensor:
    """Generate a video for training: chunk i from noise[i] [B, C, f, H, W] under text contexts[i]
    [B, L, D] (text-encoder output, one prompt per sample); returns x0 [B, C, F, H, W], with
    gradients in the chunks >= plan.loss_from_chunk when `grad` (module docstring)."""
    if len(noise) != len(contexts) or len(noise) != len(plan.exit_steps):
        raise ValueError(f"rollout: {len(noise)} noise chunks, {len(contexts)} contexts, "
                         f"{len(plan.exit_steps)} exit steps")
    out, shot = [], 0
    for i, (z, ctx) in enumerate(zip(noise, contexts)):
        cut = i > 0 and not torch.equal(ctx, contexts[i - 1])
        shot += int(cut)
        out.append(loop.rollout_chunk(i, z, ctx, exit_step=plan.exit_steps[i],
                                      grad=grad and i >= plan.loss_from_chunk, shot_start=i == 0 or cut,
                                      shot_index=shot))
    return torch.cat(out, dim=2)


def chunk_noise(shape: tuple[int, ...], chunk_index: int, seed: int, device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
    """Noise of one chunk, drawn on `device` from (seed, chunk): reproducible, no host transfer."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + chunk_index)
    return torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)

