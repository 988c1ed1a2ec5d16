"""Contract tests of every role, run over every installed implementation.

For each installed plugin (entry points: the built-ins, the example plugin, and any plugin
installed later) and the core, the role hooks it implements are called on a small debug
experiment, and what they return is held to its protocol: KV storages round-trip K/V, policies
keep their plan invariants, decoders decode chunks in order to the whole-video decode, and
objectives return a scalar loss with detached metrics, training algorithms step, resume from
their state exactly and export. A new plugin gets these tests for free.
"""
from __future__ import annotations

import inspect

import pytest
import torch

from debug_experiment import DEBUG_EXPERIMENT
from longlive.cache import CachePolicy, CacheSpec, ChunkPlan, KVStorage
from longlive.config import experiment_from_table
from longlive.geometry import Geometry
from longlive.model.presets import DIT_PRESETS
from longlive.protocols import Decoder, Objective
from longlive.core_plugin import CorePlugin
from longlive.registry.manager import installed_plugins, load_plugin_class, plugin_hooks
from longlive.run import make_run

WINDOW_FRAMES = 24  # room for every plugin's default sinks (attn_sink: 8 + 8 + the chunk)


def _providers(hook: str) -> list[str]:
    """The core and every installed plugin whose class implements `hook`."""
    classes = {"core": CorePlugin, **{name: load_plugin_class(name) for name in sorted(installed_plugins())}}
    return [name for name, cls in classes.items() if hook in plugin_hooks(cls)]


def _run(provider: str, **train):
    table = {k: dict(v) for k, v in DEBUG_EXPERIMENT.items()}
    table["sampler"]["window_frames"] = WINDOW_FRAMES
    if provider != "core":
        table["run"]["plugins"] = [provider]
    if train:
        table["run"]["task"] = "train"
        table["train"] = {"data": "unused/*.tar", **train}
    return make_run(experiment_from_table(table), create_dir=False)


def _implementation(provider: str, hook: str, **kwargs):
    """What `provider`'s implementation of `hook` returns (and the run it was called with)."""
    run = _run(provider, **(kwargs.pop("train", {})))
    impls = [i for i in getattr(run.pm.hook, hook).get_hookimpls() if i.plugin_name == provider]
    args = {name: value for name, value in {**kwargs, "run": run}.items()
            if name in inspect.signature(impls[0].function).parameters}
    return impls[0].function(**args), run


def _spec(batch: int = 2, num_slots: int = 3) -> CacheSpec:
    geo = Geometry(height=64, width=64, temporal_stride=4, spatial_stride=16, patch_h=2, patch_w=2, frames_per_chunk=2)
    return CacheSpec.for_model(DIT_PRESETS["debug"], geo, window_frames=2 * num_slots, batch=batch,
                               dtype=torch.float32)


@pytest.mark.parametrize("provider", _providers("longlive_make_kv_storage"))
def test_kv_storage_round_trips(provider):
    spec = _spec()
    storage, _ = _implementation(provider, "longlive_make_kv_storage", spec=spec)
    assert isinstance(storage, KVStorage)
    shape = (spec.batch, spec.chunk_tokens, spec.num_heads, spec.head_dim)
    g = torch.Generator().manual_seed(0)
    written = {}
    for layer in range(spec.num_layers):
        for slot in range(spec.num_slots):
            k, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
            storage.write(layer, slot, k, v)
            written[layer, slot] = (k, v)
    for layer in range(spec.num_layers):
        for slots in [(0,), (1, 2), (0, 2), tuple(range(spec.num_slots))]:
            k, v = storage.read(layer, slots)
            assert k.shape == v.shape == (spec.batch, len(slots) * spec.chunk_tokens, spec.num_heads, spec.head_dim)
            for name, got, index in (("k", k, 0), ("v", v, 1)):  # slots may come back in any order
                got_slots = sorted(got.split(spec.chunk_tokens, dim=1), key=lambda t: float(t.sum()))
                want = sorted((written[layer, s][index] for s in slots), key=lambda t: float(t.sum()))
                for a, b in zip(got_slots, want):
                    err = (a.float() - b).norm() / b.norm()
                    assert torch.isfinite(a).all() and err <= getattr(storage, "expected_relative_error", 0.0), \
                        f"{provider} {name} layer {layer} slots {slots}: relative error {err:.3g}"
    assert storage.nbytes > 0


@pytest.mark.parametrize("provider", _providers("longlive_make_kv_policy"))
def test_kv_policy_invariants(provider):
    spec = _spec(batch=1, num_slots=WINDOW_FRAMES // 2)
    policy, _ = _implementation(provider, "longlive_make_kv_policy", spec=spec)
    assert isinstance(policy, CachePolicy)
    for _ in range(2):  # reset gives the same plans again
        plans = []
        for chunk in range(3 * spec.num_slots):
            plan = policy.plan(chunk)
            assert isinstance(plan, ChunkPlan) and plan.chunk_index == chunk
            assert policy.plan(chunk) == plan, "plan() must not change the policy's state"
            assert plan.working_slot in plan.visible_slots and len(set(plan.visible_slots)) == len(plan.visible_slots)
            assert all(0 <= s < spec.num_slots for s in plan.visible_slots)
            if plan.context_slots is not None:
                assert plan.working_slot in plan.context_slots and set(plan.context_slots) <= set(plan.visible_slots)
            if plan.slot_rope_frames is not None:
                assert len(plan.slot_rope_frames) == len(plan.visible_slots)
            policy.commit(plan)
            plans.append(plan)
        assert plans[0].rope_start_frame == 0 and plans[0].visible_slots == (plans[0].working_slot,)
        assert max(len(p.visible_slots) for p in plans) <= spec.num_slots
        policy.reset()


def test_every_role_has_a_contract_test():
    """A new role hook needs a contract test here (the live prompt source and the prefix are
    exercised by the attn_sink tests: they return text, not an object with a protocol)."""
    from longlive.registry import hookspecs

    tested = {"longlive_make_kv_storage", "longlive_make_kv_policy", "longlive_make_decoder",
              "longlive_make_objective", "longlive_next_prompt", "longlive_prompt_prefix",
              "longlive_make_device_mesh", "longlive_make_sequence_layout",
              "longlive_make_training_algorithm"}
    assert set(hookspecs.ROLES) == tested


@pytest.mark.parametrize("provider", _providers("longlive_make_device_mesh"))
def test_device_mesh_of_one_process(provider):
    """Without torchrun: one process, dp = sp = 1, the run's device kept."""
    from longlive.config import ParallelConfig
    from longlive.parallel import ParallelMesh

    run = _run(provider)
    (mesh, device), _ = _implementation(provider, "longlive_make_device_mesh", parallel=ParallelConfig(),
                                        device=run.device)
    assert isinstance(mesh, ParallelMesh) and (mesh.world, mesh.dp, mesh.sp, mesh.rank) == (1, 1, 1, 0)
    assert mesh.is_writer and device == run.device


@pytest.mark.parametrize("provider", _providers("longlive_make_sequence_layout"))
def test_sequence_layout_of_one_process_is_the_identity(provider):
    """In a one-process mesh a layout (if the provider answers) holds every head and token, and
    its scatter/gather and all-to-all pairs are inverses. Multi-process layouts are held to
    single-device generation by their plugin's gloo tests."""
    from longlive.layout import SequenceLayout
    from longlive.parallel import ParallelMesh

    layout, _ = _implementation(provider, "longlive_make_sequence_layout", mesh=ParallelMesh())
    if layout is None:
        assert provider != "core"
        return
    assert isinstance(layout, SequenceLayout) and layout.sp == 1 and layout.local_heads(24) == 24
    x = torch.randn(2, 12, 4, 8)
    torch.testing.assert_close(layout.gather(layout.scatter(x)), x, rtol=0, atol=0)
    torch.testing.assert_close(layout.heads_to_seq(layout.seq_to_heads(x)), x, rtol=0, atol=0)
    assert layout.agree("prompt") == "prompt"


@pytest.mark.parametrize("provider", _providers("longlive_make_decoder"))
def test_decoder_decodes_chunks_in_order(provider):
    """push / ready / flush give the chunks in order, equal bit for bit to the whole-video decode,
    on the CPU; index 0 starts a new video; close is idempotent."""
    run = _run(provider)
    codec = run.codec_spec.build(run)
    decoder, _ = _implementation(provider, "longlive_make_decoder", codec=codec, device=run.device)
    assert isinstance(decoder, Decoder)
    generator = torch.Generator().manual_seed(1)
    try:
        for _ in range(2):  # index 0 starts a new video
            latents = torch.randn(1, 48, 6, 4, 4, generator=generator)
            pieces = []
            for i, chunk in enumerate(latents.split(2, dim=2)):
                decoder.push(i, chunk)
                pieces += decoder.ready()
            pieces += decoder.flush()
            assert decoder.flush() == [] and decoder.ready() == []
            assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in pieces)
            torch.testing.assert_close(torch.cat(pieces, dim=2), codec.decode(latents).float(), rtol=0, atol=0)
    finally:
        decoder.close()
    decoder.close()  # close twice is fine


@pytest.mark.parametrize("provider", _providers("longlive_make_objective"))
def test_objective_returns_a_loss_and_detached_metrics(provider):
    objective, run = _implementation(provider, "longlive_make_objective", train={"mode": "teacher_forcing"})
    assert isinstance(objective, Objective)
    from longlive.model.dit import WanDiT

    torch.manual_seed(0)
    model = WanDiT(run.preset).float()
    batch = {"latents": torch.randn(2, 48, 4, 4, 4), "context": torch.randn(2, 2, run.preset.text_len,
                                                                              run.preset.text_dim),
             "seeds": torch.tensor([3, 4])}
    loss, metrics = objective(model, batch, torch.Generator())
    assert loss.ndim == 0 and loss.requires_grad and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.blocks[0].parameters())
    assert metrics and all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad
                           for v in metrics.values())
    again, _ = objective(model, batch, torch.Generator())
    assert torch.equal(loss.detach(), again.detach()), "draws come from the seeds, not the generator's state"


class _Clips:
    """An in-memory dataset: random videos in [-1, 1] with one caption per chunk (a cut in odd items)."""

    def __init__(self, run, frames: int, count: int = 4) -> None:
        s = run.experiment.sampler
        pixel = 1 + run.codec_spec.temporal_stride * (frames - 1)
        g = torch.Generator().manual_seed(5)
        self.items = [{"video": torch.rand(3, pixel, s.height, s.width, generator=g) * 2 - 1, "fps": 8.0,
                       "prompts": [f"clip {i} shot {int(c > 0 and i % 2)}" for c in range(frames // s.frames_per_chunk)]}
                      for i in range(count)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _training_context(provider: str):
    from longlive.assembly import build_codec, build_text_encoder
    from longlive.distributed import DistInfo
    from longlive.train.algorithm import TrainingContext
    from longlive.train.config import train_config
    from longlive.train.data import BatchEncoder, DataStream, SkippingDataset

    run = _run(provider, mode="teacher_forcing", num_frames=4, batch_size=1, lora_rank=2, lr=1e-3)
    run.task_config = train_config(run)
    dataset = SkippingDataset(_Clips(run, frames=4), max_bad=0)
    codec, text = build_codec(run), build_text_encoder(run)
    return TrainingContext(run=run, config=run.task_config, info=DistInfo(rank=0, world_size=1, local_rank=0),
                           dataset=dataset, stream=DataStream(len(dataset), batch_size=1, seed=0),
                           encoder=BatchEncoder(codec, text, device=run.device, dtype=torch.float32),
                           codec=codec, text=text)


@pytest.mark.parametrize("provider", _providers("longlive_make_training_algorithm"))
def test_training_algorithm_steps_resumes_and_exports(provider, tmp_path):
    """Detached 0-d metrics among `logged`; trainable networks only; a second algorithm loaded
    from the first one's state (and the data position) takes the same next step, bit for bit."""
    from longlive.train.algorithm import TrainingAlgorithm

    def make():
        context = _training_context(provider)
        torch.manual_seed(0)
        impl = [i for i in context.run.pm.hook.longlive_make_training_algorithm.get_hookimpls()
                if i.plugin_name == provider][0]
        return impl.function(context=context), context

    algorithm, context = make()
    assert isinstance(algorithm, TrainingAlgorithm) and algorithm.loss_key in algorithm.logged
    assert algorithm.eval_network in algorithm.networks
    for step in range(2):
        metrics, tokens = algorithm.train_step(step)
        assert tokens > 0 and algorithm.loss_key in metrics and set(metrics) <= set(algorithm.logged)
        assert all(v.ndim == 0 and not v.requires_grad and torch.isfinite(v) for v in metrics.values())
    for net in algorithm.networks.values():
        assert net.params and all(p.requires_grad for p in net.params)
    state = algorithm.state_dict()
    other, other_context = make()
    other.load_state_dict(state, where="test")
    other_context.stream.load_state_dict(context.stream.state_dict())
    expected, _ = algorithm.train_step(2)
    got, _ = other.train_step(2)
    assert {k: v.item() for k, v in got.items()} == {k: v.item() for k, v in expected.items()}
    for name, net in algorithm.networks.items():
        for (key, a), (_, b) in zip(net.model.state_dict().items(), other.networks[name].model.state_dict().items()):
            assert torch.equal(a, b), (name, key)
    algorithm.export(tmp_path / "export.safetensors", 3)
    assert (tmp_path / "export.safetensors").stat().st_size > 0
