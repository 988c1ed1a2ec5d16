"""WanDiT: the Wan2.2-TI2V-5B DiT with three entry points sharing all weights and block code.

- `forward`: the whole video at once, bidirectional or under a mask (the "equivalent mask" of
  chunked inference, for tests and non-cached evaluation).
- `forward_chunk`: one chunk against a `ChunkKV` of the KV cache (AR inference); no mask.
- `forward_teacher`: teacher forcing over [clean ; noisy] under the teacher-forcing mask,
  both halves at identical RoPE positions; returns the prediction for the noisy half.

Architecture (Wan2.2 `WanModel`, model_type "ti2v"): Conv3d patch embedding (tokens in
(F, H, W) order); text MLP Linear-GELU(tanh)-Linear; sinusoidal timestep embedding (float64,
cat[cos, sin]) -> Linear-SiLU-Linear = e -> SiLU-Linear = e0 (6 adaLN vectors per timestep
group); `num_layers` WanBlocks; a head modulated by e; unpatchify to [B, out, F, H, W].
Every entry point returns a velocity. A preset with prediction "sample" has a head that predicts
the clean latent x0; the model returns (x_t - x0) / max(sigma, SAMPLE_MIN_SIGMA) with sigma =
t / 1000, which is the velocity wherever sigma >= SAMPLE_MIN_SIGMA (the clip keeps t = 0, the
clean context pass, finite).
Parameter names equal the original Wan/LongLive checkpoint names, so loading those is a rename
of prefixes at most (see convert.py).

Inputs: x [B, C, F, H, W]; t [B] | [B, F] | [B, L] (one timestep per sample, per latent frame,
or per token); context [B, text_len, text_dim] zero-padded text, or [B, n, text_len, text_dim]
with one prompt per chunk (n chunks of F/n frames; chunk i cross-attends to context[:, i] only).
With `text_embedded=True` the context is already `embed_text(...)` output ([.., dim]), so a
pipeline embeds each prompt once, not once per step.
"""
from __future__ import annotations

import logging
import math

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from longlive.cache import ChunkKV
from longlive.errors import ConfigError
from longlive.layout import SequenceLayout, TeacherForcingLayout
from longlive.model.attention import AttentionKernel, MaskMod, resolve_backend, teacher_forcing_mask
from longlive.model.blocks import RMSNorm, WanBlock, WanHead
from longlive.model.presets import DiTConfig
from longlive.model.rope import rope_tables
from longlive.sampling import TRAIN_TIMESTEPS

log = logging.getLogger(__name__)

SAMPLE_MIN_SIGMA = 0.05  # denominator clip of the sample -> velocity conversion


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t [...] -> [..., dim] float32: cat[cos, sin] of t * 10000^(-i/(dim/2)), computed in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.to(torch.float64)[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float()


class WanDiT(nn.Module):
    """The causal-capable Wan2.2 DiT built from a DiTConfig; `attention` is a backend name or kernel."""

    # Modules that stay in high precision when the model is quantized (LongLive's choice): the
    # embeddings of patches, text and time, the time projection, the head and every norm.
    # Exact module names, or "re:<regex>" matched against the full name. Quantization formats
    # read this list; only the blocks' attention and FFN linears are left to convert.
    KEEP_HIGH_PRECISION: tuple[str, ...] = ("patch_embedding", "text_embedding", "time_embedding",
                                            "time_projection", "head", r"re:(.*\.)?norm\w*$")

    def __init__(self, config: DiTConfig, *, attention: str | AttentionKernel = "auto") -> None:
        super().__init__()
        self.config = config
        self.attention = attention if isinstance(attention, AttentionKernel) else AttentionKernel(attention)
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_channels, dim, kernel_size=config.patch, stride=config.patch)
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.head = WanHead(config)
        # Activation checkpointing of the blocks in training (when autograd records): each block's
        # activations are recomputed in the backward; only its input is kept. Set by the caller.
        self.checkpoint_blocks = False
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Wan's initialisation of every parameter: xavier linears, zero biases, N(0, 0.02) embeddings,
        zero head weight, unit norm gains, adaLN modulation N(0, 1/dim). Draws from torch's global RNG."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            if isinstance(module, (WanBlock, WanHead)):
                nn.init.normal_(module.modulation, std=self.config.dim ** -0.5)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for module in seq:
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    @property
    def attention_backend(self) -> str:
        """The attention backend(s) this model runs on its current device and dtype, for logs and reports."""
        device = self.patch_embedding.weight.device
        plain = resolve_backend(self.attention.backend, device, masked=False, dtype=self.dtype)
        masked = resolve_backend(self.attention.backend, device, masked=True, dtype=self.dtype) \
            if self.attention.backend != "cudnn" else "none"
        return plain if masked == plain else f"{plain} (masked: {masked})"

    def compile_blocks(self, **compile_kwargs) -> None:
        """torch.compile each block in place (nn.Module.compile); the blocks share their compiled graphs.

        The KV-cache call inside self-attention runs eagerly (ChunkKV.attend_kv is excluded from
        compilation), so the layer index and the cache's slot plan never specialise a graph.
        """
        for block in self.blocks:
            block.compile(**compile_kwargs)

    @property
    def dtype(self) -> torch.dtype:
        """Activation dtype: the dtype the model was placed in, held by the patch embedding (a
        KEEP_HIGH_PRECISION module, so quantization never changes it)."""
        return self.patch_embedding.weight.dtype

    # ---- Embeddings ----------------------------------------------------------------------------

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """Text MLP: [B, (n,) text_len, text_dim] -> [B, (n,) text_len, dim]. Compute once per prompt."""
        cfg = self.config
        if context.ndim not in (3, 4) or context.shape[-1] != cfg.text_dim or context.shape[-2] != cfg.text_len:
            raise ConfigError(
                f"text context of shape {tuple(context.shape)} does not fit DiT preset {cfg.name!r}: expected "
                f"[B, {cfg.text_len}, {cfg.text_dim}] or [B, chunks, {cfg.text_len}, {cfg.text_dim}] "
                f"(text encoder output zero-padded to text_len)"
            )
        return self.text_embedding(context.to(self.dtype)).to(self.dtype)

    def _context(self, context: torch.Tensor, text_embedded: bool, frames: int) -> torch.Tensor:
        ctx = context if text_embedded else self.embed_text(context)
        if ctx.shape[-1] != self.config.dim or ctx.ndim not in (3, 4):
            raise ConfigError(f"embedded text of shape {tuple(ctx.shape)} must end in dim={self.config.dim}")
        if ctx.ndim == 4 and frames % ctx.shape[1]:
            raise ConfigError(
                f"{ctx.shape[1]} per-chunk prompts do not divide the {frames} latent frames of the input"
            )
        return ctx.to(self.dtype)

    def _grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        """Token grid (F, H, W) of a video x [B, C, F, H, W], after checking its shape."""
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ConfigError(
                f"DiT preset {cfg.name!r} takes latents [B, {cfg.in_channels}, F, H, W]; got {tuple(x.shape)}; "
                "check model.preset against the codec's latent channels"
            )
        sizes = x.shape[2:]
        if any(s % p for s, p in zip(sizes, cfg.patch)):
            raise ConfigError(
                f"latent size (F, H, W)={tuple(sizes)} is not divisible by the patch {cfg.patch} of DiT "
                f"preset {cfg.name!r}; choose sampler.height/width that are multiples of codec stride x patch"
            )
        return tuple(s // p for s, p in zip(sizes, cfg.patch))

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, F, H, W] -> tokens [B, L, dim] fp32 (the residual stream)."""
        z = self.patch_embedding(x.to(self.dtype))  # [B, dim, F, H, W] (token grid)
        return rearrange(z, "b d f h w -> b (f h w) d").float()

    def _unpatchify(self, y: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Head output [B, L, pt*ph*pw*C] -> [B, C, F, H, W] float32."""
        pt, ph, pw = self.config.patch
        f, h, w = grid
        return rearrange(y.float(), "b (f h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)",
                         f=f, h=h, w=w, pt=pt, ph=ph, pw=pw)

    def _velocity(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                  grid: tuple[int, int, int]) -> torch.Tensor:
        """Head output [B, C, F, H, W] -> velocity: unchanged, or (x - out) / sigma for "sample"."""
        if self.config.prediction == "velocity":
            return out
        batch, groups = t.shape  # [B, N], N in (1, F, L): groups of consecutive tokens
        sigma = (t.float() / TRAIN_TIMESTEPS).clamp(min=SAMPLE_MIN_SIGMA)
        sigma = sigma.repeat_interleave(math.prod(grid) // groups, dim=1).reshape(batch, 1, *grid)
        for dim, p in zip((2, 3, 4), self.config.patch):  # token grid -> latent positions
            sigma = sigma.repeat_interleave(p, dim=dim)
        return (x.float() - out) / sigma

    def _timesteps(self, t: torch.Tensor, batch: int, grid: tuple[int, int, int]) -> torch.Tensor:
        """t as [B, N] with N in (1, F, L): one timestep per group of L/N consecutive tokens."""
        frames, tokens = grid[0], math.prod(grid)
        t = torch.as_tensor(t)
        if t.ndim <= 1 and t.numel() in (1, batch):
            return t.reshape(-1, 1).expand(batch, 1)
        if t.ndim != 2 or t.shape[0] != batch or t.shape[1] not in (1, frames, tokens):
            raise ConfigError(
                f"timesteps of shape {tuple(t.shape)} must be [B], [B, F] or [B, L] "
                f"with B={batch}, F={frames} latent frames, L={tokens} tokens"
            )
        return t

    def _time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t [B, N] -> e [B, N, dim] and e0 [B, N, 6, dim], both fp32."""
        emb = sinusoidal_embedding(t, self.config.freq_dim)  # [B, N, freq_dim]
        e = self.time_embedding(emb.to(self.dtype))
        e0 = self.time_projection(e).float().unflatten(-1, (6, self.config.dim))
        return e.float(), e0

    def _rope(self, grid: tuple[int, int, int], start_frame: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_tables(*grid, self.config.head_dim, start_frame=start_frame, device=device,
                           theta=self.config.rope_theta)

    def _blocks(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor, *,
                rope: tuple[torch.Tensor, torch.Tensor], mask, kv: ChunkKV | None, segments: int,
                layout: SequenceLayout | None = None) -> torch.Tensor:
        recompute = self.checkpoint_blocks and kv is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            kwargs = dict(rope=rope, attention=self.attention, mask=mask, kv=kv, layer=i, segments=segments,
                          dtype=self.dtype, layout=layout)
            if recompute:  # the recompute repeats the block's collectives in the same order on every rank
                x = checkpoint(block, x, e0, context, use_reentrant=False, **kwargs)
            else:
                x = block(x, e0, context, **kwargs)
        return x

    # ---- Entry points -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *,
                mask_mod: MaskMod | None = None, text_embedded: bool = False) -> torch.Tensor:
        """Whole-video forward, x [B, C, F, H, W] -> flow prediction of the same shape (fp32).

        `mask_mod` (token indices in (F, H, W) order) restricts self-attention, e.g. to
        `block_causal_mask(...)` for the equivalent of chunked inference.
        """
        grid = self._grid(x)
        tokens = self._patchify(x)  # [B, L, dim]
        t = self._timesteps(t, x.shape[0], grid)
        e, e0 = self._time(t)
        ctx = self._context(context, text_embedded, grid[0])
        mask = self.attention.prepare_mask(mask_mod, tokens.shape[1], tokens.shape[1], x.device)
        h = self._blocks(tokens, e0, ctx, rope=self._rope(grid, 0, x.device), mask=mask, kv=None, segments=1)
        return self._velocity(self._unpatchify(self.head(h, e, self.dtype), grid), x, t, grid)

    def forward_chunk(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *, kv: ChunkKV,
                      text_embedded: bool = False,
                      rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One chunk x [B, C, f, H, W] at timesteps t [B, f] against the KV cache -> [B, C, f, H, W].

        Writes this chunk's K/V to the cache's working slot only (see longlive/cache.py); the
        pipeline's `cache.commit(kv)` after the clean pass makes them visible to later chunks.
        `rope` may pass the chunk's precomputed tables (`chunk_rope`) to skip recomputing them.

        The forward runs in the cache's sequence layout (`kv.layout`, longlive/layout.py): this
        rank computes its 1/sp of the tokens (their timesteps, modulation and RoPE rows),
        self-attention exchanges heads for tokens around the cache, and the head's output is
        gathered, so every rank returns the whole chunk. Single device: all identities.
        """
        layout = kv.layout
        grid = self._grid(x)
        length = math.prod(grid)
        tokens = layout.scatter(self._patchify(x))  # [B, L/sp, dim]
        t = self._timesteps(t, x.shape[0], grid)
        e, e0 = self._time(layout.local_groups(t, length))  # this rank's tokens' modulation
        ctx = self._context(context, text_embedded, grid[0])
        if layout.sp > 1 and ctx.ndim == 4 and ctx.shape[1] > 1:
            raise ConfigError(f"forward_chunk under sequence layout {layout.name!r} takes one prompt per chunk, "
                              f"got {ctx.shape[1]} per-chunk prompts; call it once per chunk")
        cos, sin = rope if rope is not None else self.chunk_rope(grid, kv, x.device)
        rope = (layout.scatter(cos, dim=0), layout.scatter(sin, dim=0))
        h = self._blocks(tokens, e0, ctx, rope=rope, mask=None, kv=kv, segments=1, layout=layout)
        out = layout.gather(self.head(h, e, self.dtype))  # [B, L, patch channels]
        return self._velocity(self._unpatchify(out, grid), x, t, grid)

    def chunk_rope(self, grid: tuple[int, int, int], kv: ChunkKV,
                   device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables (cos, sin) [L, D/2] of a chunk of token grid (F, H, W) at the cache's RoPE position."""
        return self._rope(grid, kv.rope_start_frame, torch.device(device))

    def forward_teacher(self, clean: torch.Tensor, noisy: torch.Tensor, t_noisy: torch.Tensor,
                        context: torch.Tensor, *, frames_per_block: int, t_clean: torch.Tensor | None = None,
                        text_embedded: bool = False, layout: TeacherForcingLayout | None = None) -> torch.Tensor:
        """Teacher forcing: predict the noisy video [B, C, F, H, W] given the clean one, block-causally.

        Noisy block i sees clean blocks < i and itself; clean frames see clean blocks <= their own.
        Clean and noisy halves share RoPE positions; the clean half is embedded at `t_clean`
        (default 0). Equals `forward_chunk` on each noisy chunk with the clean chunks before it
        committed to the cache.

        Under a sequence-parallel `layout` (sp > 1) every rank passes the whole clean and noisy
        video and computes only its part (`layout.teacher_split`, see `_forward_teacher_split`);
        it returns the prediction of its noisy frames [B, C, split.noisy_frames, H, W].
        """
        if clean.shape != noisy.shape:
            raise ConfigError(f"teacher forcing needs clean and noisy of one shape; got {tuple(clean.shape)} "
                              f"and {tuple(noisy.shape)}")
        grid = self._grid(noisy)
        batch, frames, length = noisy.shape[0], grid[0], math.prod(grid)
        t_n = self._timesteps(t_noisy, batch, grid)
        t_c = self._timesteps(t_clean if t_clean is not None else torch.zeros_like(t_n), batch, grid)
        if layout is not None and layout.sp > 1:
            return self._forward_teacher_split(clean, noisy, t_c, t_n, self._context(context, text_embedded, frames),
                                               grid=grid, frames_per_block=frames_per_block, layout=layout)
        tokens = torch.cat([self._patchify(clean), self._patchify(noisy)], dim=1)  # [B, 2L, dim]
        groups = max(t_n.shape[1], t_c.shape[1])  # 1 | F | L, so both can be expanded to it
        t_all = torch.cat([t_c.repeat_interleave(groups // t_c.shape[1], dim=1),
                           t_n.repeat_interleave(groups // t_n.shape[1], dim=1)], dim=1)  # [B, 2N]
        e, e0 = self._time(t_all)
        ctx = self._context(context, text_embedded, frames)
        mask_mod = teacher_forcing_mask(frames, length // frames, frames_per_block)
        mask = self.attention.prepare_mask(mask_mod, 2 * length, 2 * length, noisy.device)
        cos, sin = self._rope(grid, 0, noisy.device)
        rope = (torch.cat([cos, cos]), torch.cat([sin, sin]))  # identical positions for both halves
        h = self._blocks(tokens, e0, ctx, rope=rope, mask=mask, kv=None, segments=2)
        out = self.head(h[:, length:], e[:, groups:], self.dtype)  # the noisy half only
        return self._velocity(self._unpatchify(out, grid), noisy, t_n, grid)

    def _forward_teacher_split(self, clean: torch.Tensor, noisy: torch.Tensor, t_c: torch.Tensor, t_n: torch.Tensor,
                               ctx: torch.Tensor, *, grid: tuple[int, int, int], frames_per_block: int,
                               layout: TeacherForcingLayout) -> torch.Tensor:
        """This rank's part of teacher forcing: its sequence [clean frames ; noisy frames] of
        `layout.teacher_split`, with their global RoPE rows, timesteps and per-chunk prompts;
        self-attention exchanges heads for tokens (the layout's all-to-all) and attends under the
        teacher-forcing mask of the gathered order. Returns the velocity of its noisy frames."""
        frames, length = grid[0], math.prod(grid)
        per_frame = length // frames
        if self.config.patch[0] != 1:
            raise ConfigError(f"sequence-parallel teacher forcing splits latent frames; DiT preset {self.config.name!r} "
                              f"patches {self.config.patch[0]} frames per token (needs 1)")
        split = layout.teacher_split(frames, frames_per_block)
        parts = ((split.clean_start, split.clean_frames), (split.noisy_start, split.noisy_frames))
        # timesteps per frame (or per token): both copies on one grouping, then this rank's groups
        groups = length if length in (t_c.shape[1], t_n.shape[1]) else frames
        t_c, t_n = (t.repeat_interleave(groups // t.shape[1], dim=1) for t in (t_c, t_n))
        unit = groups // frames  # groups per frame
        t_local = [t.narrow(1, start * unit, count * unit) for t, (start, count) in zip((t_c, t_n), parts)]
        e, e0 = self._time(torch.cat(t_local, dim=1))
        tokens = torch.cat([self._patchify(x.narrow(2, start, count)) for x, (start, count)
                            in zip((clean, noisy), parts) if count], dim=1)  # [B, 2L/sp, dim]
        cos, sin = self._rope(grid, 0, noisy.device)  # global frame indices
        rope = tuple(torch.cat([table.narrow(0, start * per_frame, count * per_frame) for start, count in parts])
                     for table in (cos, sin))
        if ctx.ndim == 4:  # one prompt per chunk: the prompts of this rank's chunks, in its order
            prompt_frames = frames // ctx.shape[1]
            if any(v % prompt_frames for part in parts for v in part):
                raise ConfigError(f"sequence-parallel teacher forcing: rank {layout.sp_rank}'s frames {parts} do not "
                                  f"align with the {ctx.shape[1]} per-chunk prompts of {prompt_frames} frames; "
                                  f"make train.num_frames a multiple of parallel.sp x sampler.frames_per_chunk")
            ctx = torch.cat([ctx.narrow(1, start // prompt_frames, count // prompt_frames) for start, count in parts],
                            dim=1)
        mask_mod = teacher_forcing_mask(frames, per_frame, frames_per_block, split.mask_slices)
        mask = self.attention.prepare_mask(mask_mod, 2 * length, 2 * length, noisy.device)
        h = self._blocks(tokens, e0, ctx, rope=rope, mask=mask, kv=None, segments=1, layout=layout)
        if split.noisy_frames == 0:  # naive SP: a rank of clean frames only predicts nothing; the head
            # still runs (weight 0) so every parameter gets a gradient on every rank, as DDP requires
            tie = self.head(h[:, :per_frame], e[:, :unit], self.dtype).sum() * 0.0
            return noisy.new_zeros((noisy.shape[0], self.config.out_channels, 0, *noisy.shape[3:])) + tie
        noisy_grid = (split.noisy_frames, *grid[1:])
        out = self.head(h[:, split.clean_frames * per_frame:], e[:, split.clean_frames * unit:], self.dtype)
        return self._velocity(self._unpatchify(out, noisy_grid), noisy.narrow(2, split.noisy_start, split.noisy_frames),
                              t_local[1], noisy_grid)
