"""Rollout control in the chunk loop (training rollouts, DMD's backward simulation): the same
loop and sampler as generation, a random exit step, gradients only at that step and only in the
loss-bearing chunks, per-sample prompts and shot cuts."""
from __future__ import annotations

import pytest
import torch

from longlive.cache import CacheSpec, KVCache
from longlive.geometry import Geometry
from longlive.lora import attach
from longlive.pipeline import ChunkLoop, GenerationState, RolloutPlan, rollout
from longlive.registry import hookimpl
from longlive.registry.manager import new_plugin_manager
from longlive.sampling import unipc_sampler

FPC, CHUNKS, STEPS = 2, 3, 3


def _loop(model, batch=2, window_frames=4, pm=None):
    geo = Geometry(height=64, width=64, temporal_stride=4, spatial_stride=8, patch_h=2, patch_w=2,
                   frames_per_chunk=FPC)
    spec = CacheSpec.for_model(model.config, geo, window_frames=window_frames, batch=batch, dtype=torch.float32)
    state = GenerationState(model=model, cache=KVCache(spec), sampler=unipc_sampler(STEPS),
                            encode_text=None, batch=batch)
    return ChunkLoop(state, (pm or new_plugin_manager()).hook, run=None)


def _inputs(model, batch=2, cut_at=None):
    g = torch.Generator().manual_seed(0)
    noise = [torch.randn(batch, 48, FPC, 8, 8, generator=g) for _ in range(CHUNKS)]
    texts = [torch.randn(batch, model.config.text_len, model.config.text_dim, generator=g) for _ in range(2)]
    contexts = [texts[1] if cut_at is not None and i >= cut_at else texts[0] for i in range(CHUNKS)]
    return noise, contexts


def test_plan_is_the_same_for_the_same_seed_and_step():
    a = RolloutPlan.draw(steps=4, chunks=3, seed=1, step=7)
    assert a == RolloutPlan.draw(steps=4, chunks=3, seed=1, step=7)  # every rank, every resume
    assert len(set(a.exit_steps)) == 1 and 0 <= a.exit_steps[0] < 4
    draws = {RolloutPlan.draw(steps=4, chunks=3, seed=1, step=s).exit_steps[0] for s in range(64)}
    assert draws == {0, 1, 2, 3}
    per_chunk = {RolloutPlan.draw(steps=4, chunks=3, seed=1, step=s, same_across_chunks=False).exit_steps
                 for s in range(64)}
    assert any(len(set(p)) > 1 for p in per_chunk)


def test_last_exit_step_without_gradients_is_generation(tiny_model):
    """Exit at the last step = the inference chunk loop, bit for bit, per-sample prompts included."""
    noise, contexts = _inputs(tiny_model)
    with torch.no_grad():
        video = rollout(_loop(tiny_model), noise, contexts, RolloutPlan(exit_steps=(STEPS - 1,) * CHUNKS), grad=False)
        loop = _loop(tiny_model)
        expected = []
        for i, (z, ctx) in enumerate(zip(noise, contexts)):
            kv = loop.state.cache.begin(i)
            loop.state.chunk_index = i
            x0 = loop.denoise(z, tiny_model.embed_text(ctx), kv)
            loop.commit(x0, tiny_model.embed_text(ctx), kv)
            expected.append(x0)
    assert torch.equal(video, torch.cat(expected, dim=2))


def test_early_exit_returns_that_steps_x0(tiny_model):
    noise, contexts = _inputs(tiny_model, batch=1)
    with torch.no_grad():
        video = rollout(_loop(tiny_model, batch=1), noise[:1], contexts[:1], RolloutPlan(exit_steps=(1,)), grad=False)
        loop = _loop(tiny_model, batch=1)
        kv = loop.state.cache.begin(0)
        traj = loop.state.sampler.start(noise[0])
        ctx = tiny_model.embed_text(contexts[0])
        for _ in range(2):
            x, t = loop._model_input(traj.sample, traj.timestep)
            traj.step(loop._velocity(x, t, ctx, kv))
    assert torch.equal(video, traj.x0)


def _lora_model(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    torch.manual_seed(1)
    attach(model, rank=2, alpha=2.0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


def test_gradients_only_at_the_exit_step_of_loss_chunks(tiny_model):
    """Values equal the no-grad rollout; the gradient equals a reference that recomputes the
    loss chunk alone on a cache holding the chunks before it (later chunks' cache writes do
    not disturb the saved tensors)."""
    model = _lora_model(tiny_model)
    params = [p for p in model.parameters() if p.requires_grad]
    noise, contexts = _inputs(model)
    plan = RolloutPlan(exit_steps=(1,) * CHUNKS, loss_from_chunk=1)
    video = rollout(_loop(model), noise, contexts, plan)
    with torch.no_grad():
        plain = rollout(_loop(model), noise, contexts, plan, grad=False)
    assert video.requires_grad and torch.allclose(video, plain, atol=1e-5, rtol=1e-5)
    weight = torch.randn_like(video)
    weight[:, :, :FPC] = 0  # chunk 0 carries no loss (and has no graph)
    weight[:, :, 2 * FPC:] = 0  # only chunk 1 in this loss: chunk 2's forwards ran after it
    grads = torch.autograd.grad((video * weight).sum(), params)
    # reference: chunk 0 without gradients, chunk 1 with gradients at its exit step, nothing after
    ref_loop = _loop(model)
    ref_plan = RolloutPlan(exit_steps=(1, 1), loss_from_chunk=1)
    ref = rollout(ref_loop, noise[:2], contexts[:2], ref_plan)
    ref_grads = torch.autograd.grad((ref * weight[:, :, :2 * FPC]).sum(), params)
    assert any(g.abs().sum() > 0 for g in grads)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-6, rtol=1e-4)
    # chunk 0 is outside the loss: no graph at all
    chunk0 = rollout(_loop(model), noise[:1], contexts[:1], RolloutPlan(exit_steps=(1,), loss_from_chunk=1))
    assert not chunk0.requires_grad


class _Shots:
    def __init__(self):
        self.events = []

    @hookimpl
    def longlive_shot_start(self, shot_index, chunk_index):
        self.events.append((shot_index, chunk_index))


def test_caption_changes_are_shot_cuts(tiny_model):
    pm = new_plugin_manager()
    shots = _Shots()
    pm.register(shots)
    noise, contexts = _inputs(tiny_model, cut_at=2)
    with torch.no_grad():
        rollout(_loop(tiny_model, pm=pm), noise, contexts, RolloutPlan(exit_steps=(0,) * CHUNKS), grad=False)
    assert shots.events == [(0, 0), (1, 2)]


def test_rollout_refuses_bad_exit_steps_and_cfg(tiny_model):
    noise, contexts = _inputs(tiny_model)
    with pytest.raises(ValueError, match="exit_step 3 is outside"):
        rollout(_loop(tiny_model), noise, contexts, RolloutPlan(exit_steps=(STEPS,) * CHUNKS), grad=False)
    with pytest.raises(ValueError, match="3 noise chunks, 3 contexts, 1 exit steps"):
        rollout(_loop(tiny_model), noise, contexts, RolloutPlan(exit_steps=(0,)), grad=False)
