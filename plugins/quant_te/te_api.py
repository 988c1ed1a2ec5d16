"""The only module that imports TransformerEngine: the four names the format calls, behind one object.

`load_te()` imports them (transformer_engine[pytorch] >= 2.20, CUDA machines only; it cannot be
installed without a CUDA toolkit). Tests pass a stand-in `TEApi` that records its calls instead:
the format takes the loader as a parameter, so nothing is patched.
"""
from __future__ import annotations

from typing import Any, Callable, ContextManager

import attrs
from torch import nn

TE_INSTALL = "pip install --no-build-isolation 'longlive[te]' on a CUDA 12.8+ machine (TE builds against CUDA)"


@attrs.frozen(kw_only=True)
class TEApi:
    """The parts of TransformerEngine the format uses (TE 2.20's documented PyTorch API)."""

    Linear: Callable[..., nn.Module]  # te.Linear(in_features, out_features, bias=, params_dtype=, device=)
    autocast: Callable[..., ContextManager[Any]]  # te.autocast(enabled=True, recipe=...)
    NVFP4BlockScaling: Callable[..., Any]  # transformer_engine.common.recipe.NVFP4BlockScaling(**fields)
    is_nvfp4_available: Callable[..., Any]  # te.is_nvfp4_available(return_reason=True) -> (bool, str)


def load_te() -> TEApi:
    """The real TransformerEngine; ImportError (or OSError from its shared libraries) where it is missing."""
    import transformer_engine.pytorch as te
    from transformer_engine.common.recipe import NVFP4BlockScaling

    return TEApi(Linear=te.Linear, autocast=te.autocast, NVFP4BlockScaling=NVFP4BlockScaling,
                 is_nvfp4_available=te.is_nvfp4_available)
