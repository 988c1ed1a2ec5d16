"""The core's own hook implementations: built-in components and the default of every role.

Registered first by the plugin manager under the name "core". Its role hooks are `trylast`, so
an enabled plugin that provides the same role always takes precedence.
"""
from __future__ import annotations

import logging
from typing import Any

import attrs

from longlive.registry import hookimpl

log = logging.getLogger(__name__)


@attrs.frozen
class CoreConfig:
    """The core has no [plugins.core] table."""


class CorePlugin:
    """Built-in components (Wan2.2 presets, VAE, UMT5, samplers, tasks) and role defaults."""

    Config = CoreConfig

    @hookimpl
    def longlive_register_components(self, registry) -> None:
        from longlive import tasks
        from longlive.components import CodecSpec
        from longlive.model.presets import DIT_PRESETS

        for name, preset in DIT_PRESETS.items():
            registry.add("dit_preset", name, preset, summary=f"{preset.num_layers} layers, dim {preset.dim}")
        wan = dict(temporal_stride=4, spatial_stride=16, latent_channels=48)
        registry.add("codec", "wan2.2-vae", CodecSpec(build=tasks.build_wan_vae, **wan),
                     summary="Wan2.2 VAE, stride 4x16x16, 48 channels")
        registry.add("codec", "wan2.2-vae-debug", CodecSpec(build=tasks.build_debug_vae, **wan),
                     summary="tiny Wan2.2-architecture VAE (tests)")
        registry.add("text_encoder", "umt5-xxl", tasks.build_umt5, summary="UMT5-XXL encoder from a local directory")
        registry.add("text_encoder", "random", tasks.build_random_text,
                     summary="deterministic random embeddings (benchmarks, tests)")
        registry.add("sampler", "unipc", tasks.build_unipc, summary="Wan flow UniPC multistep (order 2)")
        registry.add("sampler", "fewstep", tasks.build_fewstep, summary="x0-predict / re-noise few-step sampler")
        registry.add("task", "generate", tasks.generate, summary="chunk-by-chunk AR generation to mp4")
        registry.add("task", "bench", tasks.bench, summary="steady-state denoise-loop speed benchmark")
        registry.add("task", "train", tasks.train, summary="bidirectional / AR teacher-forcing training")

    @hookimpl
    def longlive_load_adapters(self, model, role, training, run) -> None:
        from longlive.lora import adapters_for_role

        adapters_for_role(model, role=role, training=training, run=run)

    @hookimpl
    def longlive_quantize_model(self, model, role, training, run) -> Any:
        from longlive.quant.apply import quantize_for_role

        return quantize_for_role(model, role=role, training=training, run=run)

    @hookimpl(trylast=True)
    def longlive_make_kv_storage(self, spec, run) -> Any:
        from longlive.cache import BF16Storage

        return BF16Storage(spec)

    @hookimpl(trylast=True)
    def longlive_make_kv_policy(self, spec, run) -> Any:
        from longlive.cache import SlidingWindowPolicy

        return SlidingWindowPolicy(num_slots=spec.num_slots, frames_per_chunk=spec.frames_per_chunk)

    @hookimpl(trylast=True)
    def longlive_make_decoder(self, codec, run) -> Any:
        from longlive.decode import SyncDecoder

        return SyncDecoder(codec)

    @hookimpl(trylast=True)
    def longlive_make_objective(self, run) -> Any:
        from longlive.train.objective import FlowMatchingObjective

        return FlowMatchingObjective.from_run(run)

    @hookimpl
    def longlive_log(self, step, scalars, run) -> None:
        run.monitor.scalars(step, scalars)
        log.debug("step %d: %s", step, {k: round(float(v), 6) for k, v in scalars.items()})
