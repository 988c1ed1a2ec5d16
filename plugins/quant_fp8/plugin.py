"""The quant_fp8 plugin: registers the FP8 E4M3 W8A8 format "fp8_rowwise" (torch._scaled_mm, row-wise scales).

Select it per role in the experiment: `[quant] generator = "fp8_rowwise"`, `mode = "auto" |
"real" | "emulate"`. The core's applier converts the model's linears (longlive/quant/apply.py);
this plugin only says how.
"""
from __future__ import annotations

import logging

import attrs

from longlive.registry import hookimpl

log = logging.getLogger(__name__)

FORMAT_NAME = "fp8_rowwise"


@attrs.frozen(kw_only=True)
class QuantFP8Config:
    """[plugins.quant_fp8]."""

    # torch._scaled_mm's use_fast_accum: accumulate in the tensor cores' reduced-precision
    # accumulator instead of promoting to fp32 (faster, less exact; the real path only).
    fast_accum: bool = False


class QuantFP8:
    """FP8 E4M3 W8A8 linears, per-token activation and per-channel weight scales: torch._scaled_mm on cc >= 8.9."""

    Config = QuantFP8Config

    def __init__(self, config: QuantFP8Config) -> None:
        self.config = config

    @hookimpl
    def longlive_register_components(self, registry) -> None:
        from longlive_plugins.quant_fp8.format import FP8RowwiseFormat

        registry.add("quant_format", FORMAT_NAME, FP8RowwiseFormat(self.config),
                     summary="FP8 E4M3 W8A8, row-wise scales (torch._scaled_mm on compute capability >= 8.9)")

    @hookimpl
    def longlive_configure(self, experiment, plugin_configs) -> None:
        if FORMAT_NAME not in (experiment.quant.generator, experiment.quant.teacher, experiment.quant.critic):
            log.warning("plugin quant_fp8 is enabled but no [quant] role uses %r; set quant.generator = %r",
                        FORMAT_NAME, FORMAT_NAME)
