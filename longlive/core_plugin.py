"""The core's own hook implementations: built-in components and the default of every role.

Registered first by the plugin manager under the name "core". Its role hooks are `trylast`, so
an enabled plugin that provides the same role always takes precedence. Components are
registered as `Lazy` references: nothing heavy is imported until a task builds one.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs

from longlive.components import CodecSpec, Lazy
from longlive.errors import ConfigError
from longlive.model.presets import DIT_PRESETS
from longlive.model.vae_presets import VAE_PRESETS
from longlive.registry import hookimpl

if TYPE_CHECKING:
    import torch

    from longlive.cache import CachePolicy, CacheSpec, KVStorage
    from longlive.components import ScopedRegistry
    from longlive.config import Experiment, ParallelConfig
    from longlive.layout import SequenceLayout
    from longlive.parallel import ParallelMesh
    from longlive.model.dit import WanDiT
    from longlive.quant.apply import QuantReport
    from longlive.protocols import Codec, Decoder, Objective
    from longlive.run import RunContext
    from longlive.train.algorithm import TrainingAlgorithm, TrainingContext

log = logging.getLogger(__name__)

_TEXT_EXTRA = "'longlive[text]'"  # transformers + sentencepiece


@attrs.frozen
class CoreConfig:
    """The core has no [plugins.core] table."""


class CorePlugin:
    """Built-in components (Wan2.2 presets, VAE, UMT5, samplers, tasks) and role defaults."""

    Config = CoreConfig

    @hookimpl
    def longlive_register_components(self, registry: ScopedRegistry) -> None:
        for name, preset in DIT_PRESETS.items():
            registry.add("dit_preset", name, preset, summary=f"{preset.num_layers} layers, dim {preset.dim}")
        for name, preset, builder, summary in (
                ("wan2.2-vae", VAE_PRESETS["wan2.2-vae"], "build_wan_vae", "Wan2.2 VAE"),
                ("wan2.2-vae-debug", VAE_PRESETS["debug"], "build_debug_vae", "tiny Wan2.2-architecture VAE (tests)")):
            spec = CodecSpec(build=Lazy(f"longlive.core_components:{builder}"), temporal_stride=preset.temporal_stride,
                             spatial_stride=preset.spatial_stride, latent_channels=preset.z_dim)
            registry.add("codec", name, spec, summary=f"{summary}, stride {spec.temporal_stride}x{spec.spatial_stride}"
                         f"x{spec.spatial_stride}, {spec.latent_channels} channels")
        registry.add("text_encoder", "umt5-xxl", Lazy("longlive.core_components:build_umt5"),
                     summary="UMT5-XXL encoder from a local directory",
                     requires={"transformers": _TEXT_EXTRA, "sentencepiece": _TEXT_EXTRA})
        registry.add("text_encoder", "random", Lazy("longlive.core_components:build_random_text"),
                     summary="deterministic random embeddings (benchmarks, tests)")
        registry.add("sampler", "unipc", Lazy("longlive.core_components:build_unipc"),
                     summary="Wan flow UniPC multistep (order 2)")
        registry.add("sampler", "fewstep", Lazy("longlive.core_components:build_fewstep"),
                     summary="x0-predict / re-noise few-step sampler")
        registry.add("dataset", "shards", Lazy("longlive.train.data:ShardClipDataset.from_config"),
                     summary="webdataset shards: video + per-chunk captions (docs in longlive/train/data.py)")
        registry.add("dataset", "prompts", Lazy("longlive.train.prompt_data:PromptDataset.from_config"),
                     summary="captions only: prompt lines (.txt) and prompt scripts (.toml), for DMD T2V")
        registry.add("task", "generate", Lazy("longlive.generate:generate_video"),
                     summary="chunk-by-chunk AR generation to mp4")
        registry.add("task", "bench", Lazy("longlive.bench:run_benchmark"),
                     summary="steady-state denoise-loop speed benchmark")
        registry.add("task", "train", Lazy("longlive.train.trainer:run_training"),
                     summary="bidirectional / AR teacher-forcing training")

    @hookimpl
    def longlive_configure(self, experiment: Experiment) -> None:
        from longlive.core_components import UMT5_NEEDS_PATH

        if experiment.model.text_encoder == "umt5-xxl" and experiment.model.text_encoder_path is None:
            raise ConfigError(UMT5_NEEDS_PATH)

    @hookimpl
    def longlive_load_adapters(self, model: WanDiT, role: str, training: bool, run: RunContext) -> None:
        from longlive.lora import adapters_for_role

        adapters_for_role(model, role=role, training=training, run=run)

    @hookimpl
    def longlive_convert_model(self, model: WanDiT, role: str, checkpoint: str, training: bool, where: str,
                               run: RunContext) -> None:
        from longlive.model.convert import dit_checkpoint_keys
        from longlive.quant.packed import convert_packed_linears

        keys = dit_checkpoint_keys(checkpoint, run.experiment.model.checkpoint_format, where=where)
        convert_packed_linears(model, keys, role=role, training=training, run=run, where=where)

    @hookimpl
    def longlive_quantize_model(self, model: WanDiT, role: str, training: bool, run: RunContext) -> QuantReport:
        from longlive.quant.apply import quantize_for_role

        return quantize_for_role(model, role=role, training=training, run=run)

    @hookimpl
    def longlive_check_compat(self, run: RunContext) -> None:
        from longlive.quant.apply import check_real_paths

        check_real_paths(run)

    @hookimpl(trylast=True)
    def longlive_make_device_mesh(self, parallel: ParallelConfig, device: torch.device) -> tuple:
        from longlive.distributed import build_mesh

        return build_mesh(parallel.sp, device)

    @hookimpl(trylast=True)
    def longlive_make_sequence_layout(self, mesh: ParallelMesh) -> SequenceLayout:
        from longlive.layout import SingleDeviceLayout

        if mesh.sp != 1:
            raise ConfigError(f"parallel.sp={mesh.sp} needs a sequence-layout plugin to split each chunk over "
                              f"{mesh.sp} processes; add \"sp_balanced\" to run.plugins (or set parallel.sp = 1)")
        return SingleDeviceLayout()

    @hookimpl(trylast=True)
    def longlive_make_kv_storage(self, spec: CacheSpec) -> KVStorage:
        from longlive.cache import BF16Storage

        return BF16Storage(spec)

    @hookimpl(trylast=True)
    def longlive_make_kv_policy(self, spec: CacheSpec) -> CachePolicy:
        from longlive.cache import SlidingWindowPolicy

        return SlidingWindowPolicy(num_slots=spec.num_slots, frames_per_chunk=spec.frames_per_chunk)

    @hookimpl(trylast=True)
    def longlive_make_decoder(self, codec: Codec) -> Decoder:
        from longlive.decode import SyncDecoder

        return SyncDecoder(codec)

    @hookimpl(trylast=True)
    def longlive_make_training_algorithm(self, context: TrainingContext) -> TrainingAlgorithm:
        from longlive.train.teacher_forcing import TeacherForcing

        return TeacherForcing(context)

    @hookimpl(trylast=True)
    def longlive_make_objective(self, run: RunContext) -> Objective:
        from longlive.train.objective import FlowMatchingObjective

        return FlowMatchingObjective.from_run(run)

    @hookimpl
    def longlive_log(self, step: int, scalars: dict[str, float], run: RunContext) -> None:
        run.monitor.scalars(step, scalars)
        log.debug("step %d: %s", step, {k: round(float(v), 6) for k, v in scalars.items()})
