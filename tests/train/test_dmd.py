"""DMD distillation (plugins/dmd) on the debug DiT and toy-world shards: the DMD gradient against
its formula, the critic's loss is the core objective, exact resume of three networks,
adapter-only checkpoints, and the exported student loading through [model] lora."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from longlive.model.attention import block_causal_mask
from longlive.model.checkpoint import save_safetensors_atomic
from longlive.model.dit import WanDiT
from longlive.model.presets import DIT_PRESETS
from longlive.sampling import FlowMatching
from longlive.train.objective import FlowMatchingObjective
from longlive.train.trainer import Trainer, run_training
from longlive.registry import hookimpl
from toy_setup import dmd_table, make_toy_run, toy_table, torchrun

STEPS = 6


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A debug DiT with a non-zero head (Wan's init zeroes it: no gradient would reach the adapters)."""
    torch.manual_seed(0)
    model = WanDiT(DIT_PRESETS["debug"])
    path = tmp_path_factory.mktemp("start") / "start.safetensors"
    save_safetensors_atomic({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}, path,
                            metadata={"prediction": "velocity"})
    return str(path)


def _table(data, start, **dmd):
    return dmd_table(data, start, steps=STEPS, **dmd)


def _single():
    from longlive.distributed import DistInfo

    return DistInfo(rank=0, world_size=1, local_rank=0)


def _trainer(table, run_dir=None):
    from longlive.train.config import train_config

    run = make_toy_run(table, run_dir)
    run.task_config = train_config(run)
    return Trainer(run, run.task_config, info=_single())


def _reference_gradient(x, fake, real, fpc):
    out = torch.empty_like(x, dtype=torch.float64)
    for b in range(x.shape[0]):
        for start in range(0, x.shape[2], fpc):
            sl = (b, slice(None), slice(start, start + fpc))
            out[sl] = (fake[sl] - real[sl]) / (x[sl].double() - real[sl]).abs().mean()
    return out


@pytest.mark.parametrize("i2v", [False, True])
def test_dmd_gradient_equals_the_formula(toy_shards, start, i2v):
    """Autograd's gradient of the DMD loss w.r.t. the student's adapters equals J^T g / N with g
    computed here from the critic and the guided teacher called directly."""
    trainer = _trainer(_table(toy_shards, start, real_guidance=3.0, i2v=i2v))
    dmd = trainer.algorithm
    batch = trainer.context.next_prompts(first_frame=i2v)
    video = dmd._rollout(batch, dmd._plan(0, 0), grad=True, salt=1)
    params = dmd.generator.params
    loss, _ = dmd._dmd(video, batch)
    got = torch.autograd.grad(loss, params, retain_graph=True)

    x_t, sigma, keep = dmd.dmd_inputs(video.detach(), batch)
    f, fpc = video.shape[2], trainer.run.experiment.sampler.frames_per_chunk
    mask = block_causal_mask(f, x_t.shape[3] * x_t.shape[4] // 4, fpc, trainer.run.experiment.sampler.window_frames)
    t = sigma * 1000
    with torch.no_grad():
        def x0(model, ctx):
            return (x_t.double() - sigma.double()[:, None, :, None, None] * model(x_t, t, ctx, mask_mod=mask).double())
        empty = dmd.context.text.encode([""]).float()[0].expand_as(batch["context"])
        cond, uncond = x0(dmd.teacher, batch["context"]), x0(dmd.teacher, empty)
        real = cond + 3.0 * (cond - uncond)
        fake = x0(dmd.critic.model, batch["context"])
    g = _reference_gradient(video.detach(), fake, real, fpc)
    weight = torch.ones(video.shape[0], 1, f, 1, 1, dtype=torch.float64)
    if i2v:
        weight[:, :, 0] = 0
        assert keep is not None and not keep[:, 0].any() and torch.equal(x_t[:, :, 0], batch["image"][:, :, 0])
        assert torch.equal(video[:, :, 0], batch["image"][:, :, 0])  # the rollout clamps the image frame
    n = (weight.expand(video.shape[0], video.shape[1], f, video.shape[3], video.shape[4])).sum()
    expected = torch.autograd.grad((video.double() * (g * weight)).sum() / n, params)
    assert any(e.abs().sum() > 0 for e in expected)
    for a, e in zip(got, expected):
        assert torch.allclose(a.double(), e.double(), rtol=1e-4, atol=1e-9)


def test_critic_loss_is_the_objective_module(toy_shards, start):
    trainer = _trainer(_table(toy_shards, start))
    objective = trainer.algorithm.critic_objective
    assert type(objective) is FlowMatchingObjective and objective.mode == "causal"
    assert float(objective.sigmas.min()) == pytest.approx(0.02) and float(objective.sigmas.max()) <= 0.98 + 1e-6
    metrics, _ = trainer.algorithm.train_step(1)  # a critic-only step
    assert set(metrics) == {"critic/loss", "critic/mse", "critic/grad_norm"}


class _Scalars:
    """Collects every logged scalar by step; raises at `stop_at` (a simulated crash)."""

    def __init__(self, stop_at=None):
        self.scalars, self.stop_at = {}, stop_at

    @hookimpl
    def longlive_log(self, step, scalars, run):
        self.scalars.setdefault(step, {}).update(scalars)
        if step == self.stop_at:
            raise KeyboardInterrupt(f"simulated interruption at step {step}")


def _train(table, run_dir, *plugins):
    return run_training(make_toy_run(table, run_dir, *plugins))


def test_resume_with_three_networks_is_exact(toy_shards, start, tmp_path):
    table = _table(toy_shards, start)
    full = _Scalars()
    _train(table, tmp_path / "full", full)
    cut = _Scalars(stop_at=3)  # after the checkpoint of step 2
    with pytest.raises(KeyboardInterrupt):
        _train(table, tmp_path / "cut", cut)
    rest = _Scalars()
    result = _train(table, tmp_path / "cut", rest)
    assert result["steps"] == STEPS
    resumed = {**{s: v for s, v in cut.scalars.items() if s <= 2}, **rest.scalars}
    for step in range(1, STEPS + 1):
        a = {k: v for k, v in full.scalars[step].items() if k != "train/tokens_per_s"}
        b = {k: v for k, v in resumed[step].items() if k != "train/tokens_per_s"}
        assert a == b, step
    assert "train/generator/loss" in full.scalars[1] and "train/generator/loss" not in full.scalars[2]
    states = [torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (tmp_path / "full", tmp_path / "cut")]
    for name in ("generator", "critic"):
        one, two = (s["networks"][name] for s in states)
        assert one["model"] and all(".lora_" in k for k in one["model"])  # adapter-only checkpoints
        for key in one["model"]:
            assert torch.equal(one["model"][key], two["model"][key]), (name, key)
        assert set(one["optimizer"]["state"]) == set(two["optimizer"]["state"])
    assert states[0]["teacher"] == {"source": start}  # the frozen teacher: its source, not its weights
    assert states[0]["mode"] == "dmd"
    assert math.isfinite(result["loss"])


def test_exported_student_loads_through_model_lora_and_generates(toy_shards, start, tmp_path, caplog):
    _train(_table(toy_shards, start), tmp_path / "run")
    export = tmp_path / "run" / "student.safetensors"
    with safe_open(str(export), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["distilled"] == "dmd" and meta["sampler_steps"] == "2" and meta["sampler"] == "unipc"
    assert meta["lora_rank"] == "4" and meta["weights"] == "live" and all(".lora_" in k for k in keys)

    from longlive.assembly import build_model
    from longlive.run import run_task

    caplog.set_level("INFO", logger="longlive.lora")
    table = toy_table(toy_shards)
    table["run"]["task"] = "generate"
    table["model"]["checkpoint"] = start
    table["sampler"].update(name="unipc", steps=2)
    table["generate"] = {"prompt": "a red circle moves left"}
    table["plugins"]["toyworld"]["score"] = False
    del table["train"]
    base = build_model(make_toy_run(table, None))
    table["model"]["lora"] = str(export)
    run = make_toy_run(table, tmp_path / "gen")
    student = build_model(run)
    deltas = [(a - b).abs().max().item() for a, b in zip(student.state_dict().values(), base.state_dict().values())]
    assert max(deltas) > 0  # the adapters were merged
    result = run_task(run)
    assert (tmp_path / "gen" / "video.mp4").exists() and result
    assert "a 2-step student" in caplog.text
    table["sampler"]["steps"] = 4
    caplog.clear()
    build_model(make_toy_run(table, None))
    assert "was distilled for 2 sampler steps (unipc); sampler.steps is 4" in caplog.text


def test_each_role_takes_its_quantization_format(toy_shards, start):
    """[quant] per role: NVFP4 (emulated) bases under trained adapters for generator and critic,
    a frozen NVFP4 teacher; two steps run and stay finite."""
    from longlive.lora import LoRALinear

    table = _table(toy_shards, start)
    table["run"]["plugins"].append("quant_4o6")
    table["quant"] = {"generator": "fouroversix", "teacher": "fouroversix", "critic": "fouroversix",
                      "mode": "emulate"}
    trainer = _trainer(table)
    dmd = trainer.algorithm
    for net in (dmd.generator.model, dmd.critic.model):
        layer = net.blocks[0].ffn[0]
        assert isinstance(layer, LoRALinear) and type(layer.base).__name__ == "NVFP4Linear"
    assert type(dmd.teacher.blocks[0].ffn[0]).__name__ == "NVFP4Linear"
    assert not any(p.requires_grad for p in dmd.teacher.parameters())
    assert {r: trainer.run.quant[r]["format"] for r in ("generator", "teacher", "critic")} == dict.fromkeys(
        ("generator", "teacher", "critic"), "fouroversix")
    for step in range(2):
        metrics, _ = dmd.train_step(step)
        assert all(torch.isfinite(v) for v in metrics.values())


def test_full_generator_with_a_lora_critic(toy_shards, start):
    """train.lora_rank = 0: the whole generator trains (full state in checkpoints), the critic keeps
    adapters of plugins.dmd.critic_lora_rank; without that rank the run is refused."""
    from longlive.errors import ConfigError

    table = _table(toy_shards, start, critic_lora_rank=2)
    table["train"]["lora_rank"] = 0
    trainer = _trainer(table)
    dmd = trainer.algorithm
    assert not dmd.generator.adapters and dmd.critic.adapters
    assert len(dmd.generator.params) == len(list(dmd.generator.model.parameters()))
    metrics, _ = dmd.train_step(0)
    assert "generator/loss" in metrics and torch.isfinite(metrics["generator/grad_norm"])
    state = dmd.state_dict()["networks"]
    assert not any(".lora_" in k for k in state["generator"]["model"]) and all(".lora_" in k for k in state["critic"]["model"])
    del table["plugins"]["dmd"]["critic_lora_rank"]
    with pytest.raises(ConfigError, match="critic_lora_rank"):
        _trainer(table)


def test_loss_frames_limit_gradients_and_loss(toy_shards, start):
    """loss_frames = the last chunk: earlier chunks have no graph and no loss."""
    trainer = _trainer(_table(toy_shards, start, loss_frames=2))
    dmd = trainer.algorithm
    assert dmd.loss_from_chunk == 1
    batch = trainer.context.next_prompts()
    video = dmd._rollout(batch, dmd._plan(0, 0), grad=True, salt=1)
    _, _, keep = dmd.dmd_inputs(video.detach(), batch)
    assert keep.tolist() == [[False, False, True, True]]
    loss, _ = dmd._dmd(video, batch)
    (grad_video,) = torch.autograd.grad(loss, video)
    assert torch.all(grad_video[:, :, :2] == 0) and grad_video[:, :, 2:].abs().sum() > 0


def test_two_rank_dmd_matches_one_process(toy_shards, start, tmp_path):
    """2 gloo ranks x 1 sample = 1 process x 2 samples: gradients averaged over ranks, replicas identical."""
    import json
    from pathlib import Path

    here, out, steps = Path(__file__).parent, tmp_path / "ddp.json", 3
    code, stderr = torchrun(here / "dmd_ddp_worker.py", toy_shards, start, str(out), str(steps))
    assert code == 0, stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2 and ddp["max_param_diff"] == 0.0
    trainer = _trainer(dmd_table(toy_shards, start, steps=steps, batch_size=2))
    single = trainer.fit()
    params = torch.cat([p.detach().flatten() for net in trainer.algorithm.networks.values() for p in net.params])
    assert len(ddp["losses"]) == len(single["losses"]) == steps
    for a, b in zip(ddp["losses"], single["losses"]):
        assert abs(a - b) <= 1e-4 * abs(b), (ddp["losses"], single["losses"])
    assert torch.allclose(torch.tensor(ddp["params"]), params, atol=1e-5, rtol=1e-4)


def test_ema_per_network(toy_shards, start, tmp_path):
    """plugins.dmd.ema = ["generator"]: the generator keeps an EMA (checkpointed, exported), the critic none."""
    table = _table(toy_shards, start, ema=["generator"])
    table["train"].update(steps=2, ema_decay=0.5)
    run = make_toy_run(table, tmp_path / "run")
    result = run_training(run)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert "ema" in state["networks"]["generator"] and "ema" not in state["networks"]["critic"]
    assert set(state["networks"]["generator"]["ema"]["shadow"]) == set(state["networks"]["generator"]["model"])
    with safe_open(str(tmp_path / "run" / "student.safetensors"), "pt") as f:
        assert f.metadata()["weights"] == "ema"
        exported = {k: f.get_tensor(k) for k in f.keys()}
    for key, value in state["networks"]["generator"]["ema"]["shadow"].items():
        assert torch.equal(exported[key], value), key
    assert result["steps"] == 2


def test_prompt_dataset_drives_dmd_without_videos(start, tmp_path):
    """train.dataset = "prompts": prompt lines and a two-shot prompt script; the rollout sees a cut."""
    from longlive.train.prompt_data import PromptDataset

    (tmp_path / "lines.txt").write_text("# a comment\na red circle moves left\n\na blue square moves up\n")
    (tmp_path / "two_shots.toml").write_text('[[shot]]\nprompt = "a red circle"\nframes = 2\n'
                                             '[[shot]]\nprompt = "a green square"\nframes = 2\n')
    table = dmd_table(str(tmp_path / "{lines.txt,two_shots.toml}"), start, steps=2)
    table["train"]["dataset"] = "prompts"
    trainer = _trainer(table, tmp_path / "run")
    dataset = trainer.dataset.dataset  # inside SkippingDataset
    assert isinstance(dataset, PromptDataset)
    assert dataset.samples == [["a red circle moves left"] * 2, ["a blue square moves up"] * 2,
                               ["a red circle", "a green square"]]
    result = trainer.fit()
    assert result["steps"] == 2 and math.isfinite(result["loss"])
