"""TE's NVFP4BlockScaling recipe as data: the recipe's keyword arguments and what each operand of a linear gets.

TransformerEngine 2.20 (`transformer_engine/common/recipe/__init__.py`, class NVFP4BlockScaling,
`__post_init__`) sets one QParams per tensor role; the emulated path follows them exactly:

| role                 | block    | rounding                                | RHT (16-point, fixed signs)       |
|----------------------|----------|-----------------------------------------|-----------------------------------|
| input  (activation)  | 1x16     | nearest                                 | column-wise copy only (wgrad)     |
| weight               | 16x16 2D | nearest                                 | never                             |
| gradient (dY)        | 1x16     | stochastic                              | column-wise copy only (wgrad)     |

`disable_2d_quantization` makes the weight 1x16, `disable_stochastic_rounding` makes gradients
round to nearest, `disable_rht` drops the transform ("RHT is currently only applied to column-wise
usage so that it can be used for wgrad GEMM", the recipe's comment). 4/6 (`nvfp4_4over6`) applies
to the scopes it names, weights and/or activations, never to gradients; its tensors use the E4M3
bound 256 where `nvfp4_4over6_e4m3_use_256` covers them, and pick the candidate by
`nvfp4_4over6_err_mode` (MAE or MSE; ties keep 6). TE's 4/6 quantizer supports neither RHT nor
stochastic rounding (`NVFP4 4over6 quantization does not support stochastic rounding`, TE's
quantize dispatch; nvfp4.md §3.1), so the config refuses 4/6 unless both are disabled.
"""
from __future__ import annotations

from typing import Any

import attrs

from longlive.errors import ConfigError

SCOPES = ("none", "weights", "activations", "all")  # TE's _NVFP4_4OVER6_SCOPES
ERR_MODES = ("MAE", "MSE")  # TE's _NVFP4_4OVER6_ERR_MODES
STANDARD_E4M3_BOUND = 448.0  # TE's nvfp4_e4m3_max for 4/6 tensors outside nvfp4_4over6_e4m3_use_256
# (this module stays free of torch: `validate` and `plugins` import it)
FIXED_RECIPE_FIELDS = {  # passed explicitly, so TE's NVTE_* environment defaults cannot change a run
    "row_scaled_activation": False,
    "backward_override": None,
}


@attrs.frozen(kw_only=True)
class OperandRule:
    """How TE quantizes one operand role (its QParams and 4/6 settings) in core-reference terms."""

    scale_rule: str  # "static_6", or the 4/6 rule "mae" / "mse" (longlive/quant/nvfp4.py)
    block_2d: bool
    round_style: str  # "nearest" | "stochastic"
    rht: bool  # on the column-wise (transposed) copy, i.e. the wgrad operand
    scale_max: float | None = None  # 448 for a 4/6 operand outside nvfp4_4over6_e4m3_use_256, else the rule's own

    def quantize_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `nvfp4.quantize` for this operand (TE's op order)."""
        return {"scale_rule": self.scale_rule, "block_2d": self.block_2d, "round_style": self.round_style,
                "op_order": "te", "scale_max": self.scale_max}


@attrs.frozen(kw_only=True)
class OperandRules:
    """The three operand roles of a linear under one recipe."""

    input: OperandRule
    weight: OperandRule
    grad: OperandRule


def _in_scope(scope: str, role: str) -> bool:
    return scope == "all" or scope == role


def check_config(config: Any) -> None:
    """TE's own constraints on the recipe, as one ConfigError naming the key (validation time)."""
    if config.nvfp4_4over6 != "none" and not (config.disable_rht and config.disable_stochastic_rounding):
        on = [k for k in ("disable_rht", "disable_stochastic_rounding") if not getattr(config, k)]
        raise ConfigError(f'nvfp4_4over6: "{config.nvfp4_4over6}" needs'
                          f" {' and '.join(f'{k} = true' for k in on)}: "
                          f"TE's 4over6 quantizer supports neither RHT nor stochastic rounding; "
                          f"set them, or nvfp4_4over6 = \"none\"")


def recipe_kwargs(config: Any) -> dict[str, Any]:
    """The keyword arguments of TE's `NVFP4BlockScaling(...)`: the config's keys one to one, plus the fixed ones."""
    return {**attrs.asdict(config), **FIXED_RECIPE_FIELDS}


def _four_over_six_bound(config: Any, role: str) -> float | None:
    """448 for a 4/6 operand that `nvfp4_4over6_e4m3_use_256` leaves at the standard bound, else None."""
    if _in_scope(config.nvfp4_4over6, role) and not _in_scope(config.nvfp4_4over6_e4m3_use_256, role):
        return STANDARD_E4M3_BOUND
    return None


def operand_rules(config: Any) -> OperandRules:
    """Each operand's rule under the recipe (module docstring)."""
    four_over_six = config.nvfp4_4over6_err_mode.lower()  # core rule names "mae" / "mse"
    weight_46 = _in_scope(config.nvfp4_4over6, "weights")
    input_46 = _in_scope(config.nvfp4_4over6, "activations")
    return OperandRules(
        input=OperandRule(scale_rule=four_over_six if input_46 else "static_6", block_2d=False,
                          round_style="nearest", rht=not config.disable_rht,
                          scale_max=_four_over_six_bound(config, "activations")),
        weight=OperandRule(scale_rule=four_over_six if weight_46 else "static_6",
                           block_2d=not config.disable_2d_quantization, round_style="nearest", rht=False,
                           scale_max=_four_over_six_bound(config, "weights")),
        grad=OperandRule(scale_rule="static_6", block_2d=False,
                         round_style="nearest" if config.disable_stochastic_rounding else "stochastic",
                         rht=not config.disable_rht),
    )
