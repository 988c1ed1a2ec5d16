"""The quant_te plugin: registers the NVFP4 format "te_nvfp4", TransformerEngine's NVFP4BlockScaling recipe.

Select it per role in the experiment: `[quant] generator = "te_nvfp4"`, `mode = "auto" | "real" |
"emulate"`; this table holds the recipe. The core's applier converts the model's linears
(longlive/quant/apply.py); this plugin only says how.
"""
from __future__ import annotations

import functools
import logging

import attrs

from longlive.components import Lazy
from longlive.registry import hookimpl
from longlive.structure import one_of
from longlive_plugins.quant_te.recipe import ERR_MODES, SCOPES, check_config

log = logging.getLogger(__name__)

FORMAT_NAME = "te_nvfp4"


@attrs.frozen(kw_only=True)
class QuantTEConfig:
    """[plugins.quant_te]: the fields of TE 2.20's NVFP4BlockScaling, one to one, with TE's defaults
    (NVIDIA's NVFP4 training recipe, arXiv 2509.25149). TE reads its defaults from NVTE_* environment
    variables; we pass every field explicitly, so the TOML alone decides."""

    disable_rht: bool = False  # True: no 16-point random Hadamard transform on the wgrad operands
    disable_stochastic_rounding: bool = False  # True: gradients round to nearest
    disable_2d_quantization: bool = False  # True: weights in 1x16 blocks instead of 16x16 tiles
    nvfp4_4over6: str = attrs.field(default="none", validator=one_of(SCOPES))  # 4/6 for weights/activations
    nvfp4_4over6_e4m3_use_256: str = attrs.field(default="all", validator=one_of(SCOPES))  # 4/6 bound 256 (else 448)
    nvfp4_4over6_err_mode: str = attrs.field(default="MAE", validator=one_of(ERR_MODES))  # 4/6 candidate error

    def __attrs_post_init__(self) -> None:
        check_config(self)


class QuantTE:
    """NVFP4 linears with TE's recipe: te.Linear under te.autocast on Blackwell, the core reference elsewhere."""

    Config = QuantTEConfig

    def __init__(self, config: QuantTEConfig) -> None:
        self.config = config

    @hookimpl
    def longlive_register_components(self, registry) -> None:
        # A factory, imported when a model is quantized (TE itself only on the real path).
        registry.add("quant_format", FORMAT_NAME,
                     functools.partial(Lazy("longlive_plugins.quant_te.format:TENVFP4Format"), self.config),
                     summary="NVFP4 W4A4 with TransformerEngine's NVFP4BlockScaling recipe (te.Linear on "
                             "compute capability >= 10.0; emulated elsewhere)")

    @hookimpl
    def longlive_configure(self, experiment, plugin_configs) -> None:
        roles = [r for r in ("generator", "teacher", "critic") if getattr(experiment.quant, r) == FORMAT_NAME]
        if not roles:
            log.warning("plugin quant_te is enabled but no [quant] role uses %r; set quant.generator = %r",
                        FORMAT_NAME, FORMAT_NAME)
