"""KV re-cache on a prompt switch (LongLive 1.0's interactive re-cache; reference notes section 3.6).

When the prompt changes inside a shot, the cached K/V of the recent chunks still encode the old
prompt through cross-attention. Re-cache re-runs the model over those chunks' clean latents at
t = 0 under the new prompt, oldest first, each attending to the chunks before it, and writes
their K/V back into their own slots (`KVCache.recache`). The sinks are kept unless asked for.
Cost: one clean forward per re-cached chunk, once per switch.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import torch

from longlive.cache import ChunkPlan
from longlive.errors import LongLiveError


if TYPE_CHECKING:
    from longlive.pipeline import GenerationState

log = logging.getLogger(__name__)


def recache_chunks(state: GenerationState, prompt: str, plans: Sequence[ChunkPlan], latents: dict[int, torch.Tensor]) -> None:
    """Re-write the cached K/V of the chunks `plans` name under `prompt`.

    `state` is the pipeline's GenerationState (model, cache, text, CFG); `latents` maps chunk
    index to its clean latents [B, C, f, H, W] as committed.
    """
    context = state.context(prompt)
    for plan in plans:
        if plan.chunk_index not in latents:
            raise LongLiveError(f"attn_sink: re-cache needs the latents of chunk {plan.chunk_index}, "
                                f"which were not kept (held: {sorted(latents)})")
        x0 = latents[plan.chunk_index]
        x = torch.cat([x0, x0]) if state.cfg else x0  # the CFG cache holds the negative batch too
        t = torch.zeros(x.shape[0], x.shape[2], device=x.device, dtype=torch.float32)  # [B, f]: the clean pass
        state.model.forward_chunk(x, t, context, text_embedded=True, kv=state.cache.recache(plan))
