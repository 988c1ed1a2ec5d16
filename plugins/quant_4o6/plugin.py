"""The quant_4o6 plugin: registers the NVFP4 quantization format "fouroversix" (fouroversix 1.0.5).

Select it per role in the experiment: `[quant] generator = "fouroversix"`, `mode = "auto" |
"real" | "emulate"`; this table holds the format's numerics. The core's applier converts the
model's linears (longlive/quant/apply.py); this plugin only says how.
"""
from __future__ import annotations

import functools
import logging

import attrs

from longlive.components import Lazy
from longlive.registry import hookimpl
from longlive.structure import one_of

log = logging.getLogger(__name__)

FORMAT_NAME = "fouroversix"
SCALE_RULES = ("static_6", "static_4", "mse", "mae", "abs_max")  # = backend.SCALE_RULES (no fouroversix import here)


@attrs.frozen(kw_only=True)
class Quant4o6Config:
    """[plugins.quant_4o6]: scale rules and the training recipe of the "fouroversix" format.

    Scale rules: static_6 = standard NVFP4; static_4 maps each block's max to 4; mse, mae, abs_max
    = Four Over Six (per block the better of max->6 and max->4 by that error). LongLive 2.0's AR
    NVFP4 training uses weight static_6, activation mse, gradient mse; its inference uses mse.
    """

    weight_scale_rule: str = attrs.field(default="mse", validator=one_of(SCALE_RULES))
    activation_scale_rule: str = attrs.field(default="mse", validator=one_of(SCALE_RULES))  # per call, W4A4
    gradient_scale_rule: str = attrs.field(default="mse", validator=one_of(SCALE_RULES))  # training only
    gradient_round_style: str = attrs.field(default="stochastic", validator=one_of(("stochastic", "nearest")))
    weight_scale_2d: bool = False  # inference weights in 16x16 tiles (LongLive's model_4o6.pt: 1x16)
    train_weight_scale_2d: bool = True  # training: 16x16 tiles, so Q(W)^T == Q(W^T) in fprop and dgrad
    wgrad_rht: bool = True  # 16-point random Hadamard transform on both wgrad operands


# fouroversix 1.0.5 is an sdist; without CUDA its pure-Python part builds with this (README, "Run the tests").
FOUROVERSIX_INSTALL = ('ninja packaging psutil "setuptools>=77.0.3" transformers, then SKIP_CUDA_BUILD=1 pip install '
                       '--no-build-isolation fouroversix==1.0.5')


class Quant4o6:
    """NVFP4 W4A4 linears through fouroversix (4/6 block scaling): CUTLASS on Blackwell, its PyTorch path elsewhere."""

    Config = Quant4o6Config

    def __init__(self, config: Quant4o6Config) -> None:
        self.config = config

    @hookimpl
    def longlive_register_components(self, registry) -> None:
        # A factory, imported when a model is quantized: validate and `plugins` load no fouroversix.
        registry.add("quant_format", FORMAT_NAME,
                     functools.partial(Lazy("longlive_plugins.quant_4o6.format:FourOverSixFormat"), self.config),
                     summary=f"NVFP4 W4A4 via fouroversix (weights {self.config.weight_scale_rule}, "
                             f"activations {self.config.activation_scale_rule})",
                     requires={"fouroversix": FOUROVERSIX_INSTALL, "transformers": FOUROVERSIX_INSTALL})

    @hookimpl
    def longlive_configure(self, experiment, plugin_configs) -> None:
        roles = [r for r in ("generator", "teacher", "critic") if getattr(experiment.quant, r) == FORMAT_NAME]
        if not roles:
            log.warning("plugin quant_4o6 is enabled but no [quant] role uses %r; set quant.generator = %r",
                        FORMAT_NAME, FORMAT_NAME)
