"""The AR training recipe: I2V teacher forcing (frame 0 given clean, no loss) and error recycling
(buffers of the model's errors: contents, injection, exact resume, 1 vs 2 processes)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from longlive.errors import ConfigError
from longlive.train import checkpoint as ckpt
from longlive.train.config import ErrorRecyclingConfig
from longlive.train.data import BatchEncoder
from longlive.train.error_recycling import ErrorBuffers
from longlive.train.objective import FlowMatchingObjective
from longlive.train.trainer import run_training
from toy_setup import LossLog, make_toy_run, recipe_table, toy_table, torchrun

HERE = Path(__file__).parent


class _Recorder:
    """A stand-in DiT: keeps its teacher-forcing inputs and returns a leaf prediction."""

    def forward_teacher(self, clean, noisy, t, context, *, frames_per_block):
        self.clean, self.noisy, self.t = clean, noisy, t
        self.pred = torch.randn(noisy.shape, generator=torch.Generator().manual_seed(5), requires_grad=True)
        return self.pred


def _batch(batch: int = 2, frames: int = 4) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"latents": torch.randn(batch, 3, frames, 4, 4, generator=g), "context": torch.zeros(batch, 2, 5, 8),
            "seeds": torch.arange(batch) + 10}


def test_i2v_frame0_is_clean_in_both_streams_and_gets_no_gradient():
    objective = FlowMatchingObjective(mode="teacher_forcing", frames_per_chunk=2, shift=5.0, weighting="gaussian")
    batch = _batch()
    batch["clean_frames"] = torch.tensor([[True, False, False, False], [False, False, False, False]])
    model = _Recorder()
    loss, metrics = objective(model, batch, torch.Generator())
    loss.backward()
    x0 = batch["latents"]
    assert torch.equal(model.clean, x0)
    assert torch.equal(model.noisy[0, :, 0], x0[0, :, 0]) and model.t[0, 0] == 0  # the image, t = 0
    assert not torch.equal(model.noisy[1, :, 0], x0[1, :, 0]) and model.t[1, 0] > 0  # the T2V sample is noised
    grad = model.pred.grad
    assert torch.isfinite(loss) and grad[0, :, 0].abs().max() == 0  # frame 0 of the I2V sample: no loss
    assert grad[0, :, 1:].abs().min() > 0 and grad[1].abs().min() > 0
    # The logged MSE skips the image frame too: a huge error there changes neither loss nor MSE.
    class Off(_Recorder):
        def forward_teacher(self, clean, noisy, t, context, *, frames_per_block):
            pred = super().forward_teacher(clean, noisy, t, context, frames_per_block=frames_per_block).detach().clone()
            pred[0, :, 0] += 1e3
            return pred

    loss_off, metrics_off = objective(Off(), batch, torch.Generator())
    assert torch.equal(loss_off, loss.detach()) and torch.equal(metrics_off["mse"], metrics["mse"])


def test_toy_clips_name_their_image_frame(toy_shards):
    from longlive_plugins.toyworld.shards import iter_clips

    clip = next(iter(iter_clips(toy_shards)))
    assert clip["meta"]["image_frame"] == 0


def test_i2v_choice_per_sample_from_its_seed():
    from longlive_plugins.toyworld.codec import PatchCodec

    encoder = BatchEncoder(None, None, device=torch.device("cpu"), dtype=torch.float32, i2v_probability=0.5)
    seeds = list(range(400))
    clean = encoder.clean_frames(seeds, 4, torch.device("cpu"))
    assert not clean[:, 1:].any() and 0.4 < clean[:, 0].float().mean() < 0.6
    assert torch.equal(clean[7:9], encoder.clean_frames(seeds[7:9], 4, torch.device("cpu")))  # not rank-dependent
    encoder.i2v_probability = 1.0
    assert encoder.clean_frames(seeds[:5], 4, torch.device("cpu"))[:, 0].all()
    # the image is the video's first frame: a causal codec encodes it alone into latent frame 0
    codec = PatchCodec(spatial_factor=4, temporal_factor=1)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    assert torch.equal(codec.encode(video)[:, :, :1], codec.encode(video[:, :, :1]))


def _config(**kw) -> ErrorRecyclingConfig:
    return ErrorRecyclingConfig(enabled=True, **{"buckets": 4, "capacity": 2, **kw})


def test_buffers_keep_the_newest_errors_of_each_bucket_and_skip_clean_frames():
    buffers = ErrorBuffers(_config())
    sigma = torch.tensor([[0.1, 0.1, 0.9, 0.9]])  # buckets 0, 0, 3, 3
    clean = torch.tensor([[True, False, False, False]])
    for value in (1.0, 2.0, 3.0):
        v_pred = torch.full((1, 3, 4, 2, 2), value)
        buffers.record(v_pred, torch.zeros_like(v_pred), sigma, clean)
        buffers.commit()
    state = buffers.state_dict()
    assert state["count"].tolist() == [2, 0, 0, 2]
    # bucket 0 got one frame per step (frame 0 is clean): values 1, 2, 3 in a ring of 2 -> [3, 2]
    assert state["ring_x0"][0, :, 0, 0, 0].tolist() == pytest.approx([-0.3, -0.2])  # -sigma (v_pred - v)
    assert state["ring_noise"][0, :, 0, 0, 0].tolist() == pytest.approx([2.7, 1.8])  # (1 - sigma)(v_pred - v)
    # bucket 3 got two frames per step: the last step's two
    assert state["ring_x0"][3, :, 0, 0, 0].tolist() == pytest.approx([-2.7, -2.7])


def test_injection_adds_errors_of_each_frames_bucket_except_clean_frames():
    buffers = ErrorBuffers(_config(context_probability=1.0, latent_probability=1.0, noise_probability=0.0))
    sigma = torch.tensor([[0.1, 0.1, 0.6, 0.6]])  # buckets 0, 0, 2, 2
    v_pred = torch.ones(1, 3, 4, 2, 2)
    buffers.record(v_pred, torch.zeros_like(v_pred), torch.tensor([[0.1, 0.1, 0.1, 0.1]]), None)  # bucket 0 only
    buffers.commit()
    x0, noise = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    clean = torch.tensor([[True, False, False, False], [False] * 4])
    context, noised, noise_in = buffers.inject(x0, noise, sigma.expand(2, 4), clean, torch.tensor([3, 4]))
    assert torch.equal(noise_in, noise)  # noise_probability 0
    assert torch.equal(context[0, :, 0], x0[0, :, 0])  # the I2V image stays exact
    assert torch.allclose(context[0, :, 1], x0[0, :, 1] - 0.1) and torch.allclose(context[1, :, :2], x0[1, :, :2] - 0.1)
    assert torch.equal(context[:, :, 2:], x0[:, :, 2:])  # bucket 2 is empty: nothing to inject
    assert torch.equal(noised, context)
    again = buffers.inject(x0, noise, sigma.expand(2, 4), clean, torch.tensor([3, 4]))
    assert all(torch.equal(a, b) for a, b in zip(again, (context, noised, noise_in)))


def test_recycling_refuses_bidirectional_training(toy_shards):
    table = toy_table(toy_shards, mode="bidirectional", error_recycling={"enabled": True})
    with pytest.raises(ConfigError, match="error_recycling"):
        run_training(make_toy_run(table, None))


def test_resume_with_i2v_and_recycling_is_bit_identical(toy_shards, tmp_path):
    def train(run_dir, *plugins):
        return run_training(make_toy_run(recipe_table(toy_shards, steps=6, save_every=2), run_dir, *plugins))

    full = LossLog()
    result = train(tmp_path / "full", full)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", LossLog(stop_at=5))
    resumed_log = LossLog()
    resumed = train(tmp_path / "cut", resumed_log)
    assert min(resumed_log.losses) == 5  # resumed from the step-4 checkpoint
    assert resumed["losses"] == result["losses"]
    a = ckpt.load_checkpoint(tmp_path / "full" / "checkpoints")["error_recycling"]
    b = ckpt.load_checkpoint(tmp_path / "cut" / "checkpoints")["error_recycling"]
    assert a["count"].sum() > 0 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_match_one(toy_shards, tmp_path):
    out = tmp_path / "recycling.pt"
    code, stderr = torchrun(HERE / "recycling_worker.py", toy_shards, str(out), "1", "3")
    assert code == 0, stderr[-3000:]
    two = torch.load(out, weights_only=True)
    assert two["max_buffer_diff"] == 0.0  # every rank holds the same buffers
    single = run_training(make_toy_run(recipe_table(toy_shards, batch_size=2, steps=3), tmp_path / "one"))
    for a, b in zip(two["losses"], single["losses"]):
        assert abs(a - b) <= 1e-4 * abs(b), (two["losses"], single["losses"])
    one = ckpt.load_checkpoint(tmp_path / "one" / "checkpoints")["error_recycling"]
    buffers = two["buffers"]
    assert one["count"].sum() > 0 and one.keys() == buffers.keys()
    assert torch.equal(one["count"], buffers["count"]) and torch.equal(one["pointer"], buffers["pointer"])
    for key in ("ring_x0", "ring_noise"):  # the same errors in the same slots (DDP's gradient mean rounds apart)
        assert torch.allclose(one[key], buffers[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train", [{"i2v_probability": 0.5}, {"error_recycling": {"enabled": True}}])
def test_i2v_and_recycling_refuse_sequence_parallelism(toy_shards, train):
    from types import SimpleNamespace

    from longlive.structure import structure
    from longlive.train.config import TrainConfig
    from longlive.train.teacher_forcing import TeacherForcing

    config = structure({"data": toy_shards, **train}, TrainConfig, where="train")
    context = SimpleNamespace(run=SimpleNamespace(mesh=SimpleNamespace(sp=2)), config=config)
    with pytest.raises(ConfigError, match="parallel.sp = 2"):
        TeacherForcing(context)
