"""FlowMatchingObjective: per-chunk timesteps, zero loss at the exact prediction, time weights."""
from __future__ import annotations

import math

import pytest
import torch

from longlive.sampling import FlowMatching
from longlive.train.objective import FlowMatchingObjective, sigma_grid, time_weights

B, C, F, H, W = 3, 4, 6, 2, 2
FPC = 2


class ExactModel:
    """A fake DiT that knows x0 and returns the exact flow (x_t - x0) / sigma; records its inputs."""

    def __init__(self, x0: torch.Tensor) -> None:
        self.x0, self.calls = x0, []

    def _flow(self, x_t, t):
        sigma = (t / 1000.0).view(t.shape[0], 1, -1, 1, 1) if t.ndim == 2 else (t / 1000.0).view(-1, 1, 1, 1, 1)
        return (x_t - self.x0) / sigma

    def forward_teacher(self, clean, noisy, t_noisy, context, *, frames_per_block):
        self.calls.append(("teacher", clean, t_noisy, frames_per_block))
        return self._flow(noisy, t_noisy)

    def __call__(self, x_t, t, context):
        self.calls.append(("forward", x_t, t, None))
        return self._flow(x_t, t)


def batch(seeds=(11, 12, 13)):
    g = torch.Generator().manual_seed(0)
    return {"latents": torch.randn(len(seeds), C, F, H, W, generator=g),
            "context": torch.randn(len(seeds), F // FPC, 5, 8, generator=g),
            "seeds": torch.tensor(seeds)}


def objective(mode="teacher_forcing", weighting="gaussian"):
    return FlowMatchingObjective(mode=mode, frames_per_chunk=FPC, shift=5.0, weighting=weighting)


def test_teacher_forcing_draws_one_timestep_per_chunk_on_the_grid():
    b = batch()
    model = ExactModel(b["latents"])
    objective()(model, b, torch.Generator())
    kind, clean, t, fpb = model.calls[0]
    assert kind == "teacher" and fpb == FPC and torch.equal(clean, b["latents"])  # clean half = x0
    assert t.shape == (B, F)
    chunks = t.view(B, F // FPC, FPC)
    assert torch.equal(chunks, chunks[..., :1].expand_as(chunks))  # constant inside a chunk
    assert (chunks[..., 0] != chunks[..., :1, 0]).any()  # chunks draw their own timesteps
    grid = sigma_grid(5.0).float() * 1000
    assert torch.isin(t, grid).all()


def test_bidirectional_draws_one_timestep_per_sample():
    b = batch()
    model = ExactModel(b["latents"])
    objective("bidirectional")(model, b, torch.Generator())
    kind, _, t, _ = model.calls[0]
    assert kind == "forward" and t.shape == (B,)


@pytest.mark.parametrize("mode", ["teacher_forcing", "bidirectional"])
def test_loss_is_zero_at_the_exact_prediction_and_positive_otherwise(mode):
    b = batch()
    loss, metrics = objective(mode)(ExactModel(b["latents"]), b, torch.Generator())
    assert float(loss) < 1e-10 and float(metrics["mse"]) < 1e-10
    wrong, _ = objective(mode)(ExactModel(b["latents"] + 0.1), b, torch.Generator())
    assert float(wrong) > 1e-3


def test_draws_depend_only_on_each_samples_seed():
    """Splitting a batch (ranks, micro-steps) does not change any sample's noise or timesteps."""
    obj, g = objective(), torch.Generator()
    x0 = torch.zeros(3, C, F, H, W)
    noise, index = obj.draw(x0, torch.tensor([5, 6, 7]), g)
    noise_1, index_1 = obj.draw(x0[1:2], torch.tensor([6]), g)
    assert torch.equal(noise[1:2], noise_1) and torch.equal(index[1:2], index_1)
    assert not torch.equal(noise[0], noise[1])


def test_sigma_grid_is_the_shifted_uniform_grid():
    s = sigma_grid(5.0)
    assert s.shape == (1000,) and s[0] == 1.0 and (s[1:] < s[:-1]).all()
    u = 1 - 37 / 1000
    assert math.isclose(float(s[37]), 5 * u / (1 + 4 * u), rel_tol=1e-12)
    assert float(FlowMatching.shift_sigma(torch.tensor(u, dtype=torch.float64), 5.0)) == float(s[37])


def test_gaussian_weights_have_mean_one_peak_at_500_and_zero_minimum():
    t = sigma_grid(5.0) * 1000
    w = time_weights(t, "gaussian")
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-12)
    assert float(w.min()) == 0.0 and int(w.argmin()) == 0  # t = 1000 is farthest from 500 at shift 5
    y = torch.exp(-2 * ((t - 500) / 1000) ** 2)
    ref = (y - y.min()) / (y - y.min()).mean()
    assert torch.allclose(w, ref, rtol=0, atol=1e-12)
    peak = float(t[int(w.argmax())])
    assert abs(peak - 500) < 3  # the grid point nearest t = 500
    assert torch.equal(time_weights(t, "uniform"), torch.ones_like(t))


def test_loss_weights_frames_by_their_timestep():
    """With a constant error, the loss is mse times the mean weight of the drawn timesteps."""
    b = batch()
    obj = objective()
    model = ExactModel(b["latents"] - 0.5)  # pred - target = 0.5 / sigma * ... : compute exactly below
    loss, metrics = obj(model, b, torch.Generator())
    noise, index = obj.draw(b["latents"], b["seeds"], torch.Generator())
    sigma = obj.sigmas[index].view(B, 1, F, 1, 1)
    err = (0.5 / sigma).expand(B, C, F, H, W).pow(2).mean(dim=(1, 3, 4))  # [B, F]
    assert torch.allclose(loss, (err * obj.weights[index]).mean(), rtol=1e-5)
    assert torch.allclose(metrics["mse"], err.mean(), rtol=1e-5)


def test_real_debug_dit_gets_finite_loss_and_gradients(tiny_model):
    model = tiny_model.train()
    g = torch.Generator().manual_seed(0)
    b = {"latents": torch.randn(2, 48, 4, 4, 4, generator=g), "context": torch.randn(2, 2, 16, 32, generator=g),
         "seeds": torch.tensor([1, 2])}
    loss, _ = objective()(model, b, torch.Generator())
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)


def test_from_run_reads_the_train_table():
    from longlive.config import experiment_from_table
    from longlive.run import make_run

    table = {"run": {"name": "t", "task": "train", "device": "cpu"},
             "model": {"preset": "debug", "codec": "wan2.2-vae-debug", "text_encoder": "random"},
             "sampler": {"height": 64, "width": 64, "num_frames": 4, "frames_per_chunk": 2, "window_frames": 4},
             "train": {"data": "nowhere/*.tar", "mode": "bidirectional", "timestep_shift": 3.0,
                       "time_weighting": "uniform"}}
    run = make_run(experiment_from_table(table), create_dir=False)
    obj = run.hook.longlive_make_objective(run=run)
    assert isinstance(obj, FlowMatchingObjective)
    assert obj.mode == "bidirectional" and obj.frames_per_chunk == 2
    assert torch.allclose(obj.sigmas, sigma_grid(3.0).float()) and torch.equal(obj.weights, torch.ones(1000))


def test_training_from_scratch_uses_wans_seeded_initialisation():
    from longlive.config import experiment_from_table
    from longlive.assembly import build_model
    from longlive.run import make_run

    def model(seed):
        table = {"run": {"name": "t", "task": "train", "device": "cpu", "seed": seed},
                 "model": {"preset": "debug", "codec": "wan2.2-vae-debug", "text_encoder": "random"},
                 "sampler": {"height": 64, "width": 64, "num_frames": 4, "frames_per_chunk": 2, "window_frames": 4},
                 "train": {"data": "nowhere/*.tar"}}
        return build_model(make_run(experiment_from_table(table), create_dir=False), training=True)

    a, b, c = model(1), model(1), model(2)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.isfinite(p).all(), name  # meta -> empty -> every parameter initialised
        assert torch.equal(p, q), name  # seeded
    assert not torch.equal(a.blocks[0].self_attn.q.weight, c.blocks[0].self_attn.q.weight)
    assert not a.head.head.weight.any() and torch.equal(a.blocks[0].norm3.weight, torch.ones_like(a.blocks[0].norm3.weight))


@pytest.mark.parametrize("mode", ["teacher_forcing", "bidirectional"])
def test_caption_start_weight_scales_the_chunks_that_start_a_caption(mode):
    b = batch()
    b["context"][:, 1] = b["context"][:, 0]  # sample by sample: chunk 1 continues chunk 0's caption
    b["context"][1, 2] = b["context"][1, 1]  # sample 1: chunk 2 too (one caption throughout)
    wrong = ExactModel(b["latents"] + 0.1)
    obj = FlowMatchingObjective(mode=mode, frames_per_chunk=FPC, shift=5.0, weighting="uniform",
                                caption_start_weight=4.0)
    loss, metrics = obj(wrong, b, torch.Generator())
    plain, _ = objective(mode, weighting="uniform")(wrong, b, torch.Generator())
    # Reference: the per-frame MSE (same draws) weighted by hand.
    noise, index = obj.draw(b["latents"], b["seeds"], torch.Generator())
    sigma = obj.sigmas[index]
    x_t = FlowMatching.add_noise(b["latents"], noise, sigma)
    t = FlowMatching.timestep(sigma)
    pred = wrong.forward_teacher(None, x_t, t, None, frames_per_block=FPC) if mode == "teacher_forcing" else \
        wrong(x_t, t[:, 0], None)
    mse = (pred - FlowMatching.velocity_target(b["latents"], noise)).pow(2).mean(dim=(1, 3, 4))  # [B, F]
    starts = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 0, 1]], dtype=torch.float32)  # [B, chunks]
    weight = (1 + 3 * starts).repeat_interleave(FPC, dim=1)
    torch.testing.assert_close(loss, (mse * weight).mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(plain, mse.mean(), rtol=1e-5, atol=0)
    assert math.isfinite(float(loss)) and float(loss) > float(plain)


class RecordingModel:
    """Returns a fixed prediction; records the forward's inputs (the causal mode's call)."""

    def __init__(self, pred: torch.Tensor) -> None:
        self.pred, self.calls = pred, []

    def __call__(self, x_t, t, context, *, mask_mod=None):
        self.calls.append((x_t, t, mask_mod))
        return self.pred


def test_causal_mode_one_level_per_video_under_the_block_mask_clamped():
    """The DMD critic's loss: one t per video, the inference block-causal mask, t clamped to [20, 980]."""
    from longlive.model.attention import block_causal_mask

    b = batch()
    model = RecordingModel(torch.zeros(len(b["seeds"]), C, F, H, W))
    objective = FlowMatchingObjective(mode="causal", frames_per_chunk=FPC, shift=5.0, weighting="uniform",
                                      patch=(1, 2, 2), window_frames=4, timestep_range=(20.0, 980.0))
    loss, _ = objective(model, b, torch.Generator())
    x_t, t, mask = model.calls[0]
    assert mask == block_causal_mask(F, 1, FPC, 4)  # (H/2)(W/2) = 1 token per frame
    assert t.shape == (B, F) and torch.equal(t, t[:, :1].expand(B, F))
    assert float(objective.sigmas.max()) == pytest.approx(0.98) and float(objective.sigmas.min()) == pytest.approx(0.02)
    noise, _ = objective.draw(b["latents"], b["seeds"], torch.Generator())
    target = FlowMatching.velocity_target(b["latents"], noise)
    assert torch.allclose(loss, target.pow(2).mean())  # prediction 0, uniform weights


def test_clean_frames_are_given_clean_and_carry_no_loss():
    b = batch()
    b["clean_frames"] = torch.zeros(B, F, dtype=torch.bool)
    b["clean_frames"][:, 0] = True  # I2V: the image frame
    model = ExactModel(b["latents"])
    objective = FlowMatchingObjective(mode="teacher_forcing", frames_per_chunk=FPC, shift=5.0, weighting="uniform")
    pred_bad = RecordingModel(torch.zeros(B, C, F, H, W))
    causal = FlowMatchingObjective(mode="causal", frames_per_chunk=FPC, shift=5.0, weighting="uniform",
                                   patch=(1, 2, 2))
    loss, _ = causal(pred_bad, b, torch.Generator())
    x_t, t, _ = pred_bad.calls[0]
    assert torch.equal(x_t[:, :, 0], b["latents"][:, :, 0]) and torch.all(t[:, 0] == 0)
    noise, _ = causal.draw(b["latents"], b["seeds"], torch.Generator())
    target = FlowMatching.velocity_target(b["latents"], noise)
    assert torch.allclose(loss, target[:, :, 1:].pow(2).mean())  # frame 0 left out of the mean
    with pytest.raises(Exception, match="per-frame timesteps"):
        FlowMatchingObjective(mode="bidirectional", frames_per_chunk=FPC, shift=5.0, weighting="uniform")(model, b,
                                                                                                           torch.Generator())
    assert objective(model, {k: v for k, v in b.items() if k != "clean_frames"}, torch.Generator())[0] < 1e-8
