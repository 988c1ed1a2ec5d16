"""The kv_fp4 plugin: the KV-storage role filled by NVFP4Storage."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs

from longlive.registry import hookimpl
from longlive.structure import one_of

if TYPE_CHECKING:
    from longlive.cache import CacheSpec
    from longlive.run import RunContext
    from longlive_plugins.kv_fp4.storage import NVFP4Storage

log = logging.getLogger(__name__)

SCALE_RULES = ("static_6", "mse")  # the rules the kernels implement (reference.KV_SCALE_RULES)


@attrs.frozen(kw_only=True)
class KVFP4Config:
    """The [plugins.kv_fp4] table."""

    # static_6: standard NVFP4 (block max -> 6); mse: 4/6, each block's max mapped to 6 or to 4,
    # whichever gives the smaller squared error (fouroversix's rule).
    scale_rule: str = attrs.field(default="static_6", validator=one_of(SCALE_RULES))


class KVFP4:
    """NVFP4 KV cache: E2M1 values, an E4M3 scale per 16 of head_dim, an FP32 amax per slot and layer."""

    Config = KVFP4Config

    def __init__(self, config: KVFP4Config) -> None:
        self.config = config

    @hookimpl
    def longlive_make_kv_storage(self, spec: CacheSpec, run: RunContext) -> NVFP4Storage:
        from longlive_plugins.kv_fp4.storage import NVFP4Storage

        storage = NVFP4Storage(spec, scale_rule=self.config.scale_rule)
        log.info("kv_fp4: NVFP4 KV storage (%s, %s kernels), %.3f GiB", self.config.scale_rule,
                 storage.backend.name, storage.nbytes / 2**30)
        return storage
