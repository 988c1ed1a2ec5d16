"""The core's component factories: the Wan2.2 VAE, UMT5-XXL, random text, the samplers.

The core plugin registers them by name as `Lazy("longlive.core_components:...")` references, so
this module (and torch, and the model code) is imported only when a task builds a component.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from longlive.errors import ConfigError

if TYPE_CHECKING:
    from longlive.config import SamplerConfig
    from longlive.model.random_text import RandomTextEncoder
    from longlive.model.text import UMT5TextEncoder
    from longlive.model.vae import WanVAE
    from longlive.run import RunContext
    from longlive.sampling import Sampler

log = logging.getLogger(__name__)


# ---- codecs ------------------------------------------------------------------------------


def build_wan_vae(run: RunContext) -> WanVAE:
    return _place_vae(run, "wan2.2-vae")


def build_debug_vae(run: RunContext) -> WanVAE:
    return _place_vae(run, "debug")


def _place_vae(run: RunContext, preset: str) -> WanVAE:
    from longlive.model.init import seeded_init
    from longlive.model.vae import VAE_PRESETS, WanVAE
    from longlive.model.vae_convert import load_vae_weights

    vae = WanVAE(VAE_PRESETS[preset])
    path = run.experiment.model.codec_checkpoint
    if path is not None:
        load_vae_weights(vae, path)
    else:
        log.warning("model.codec_checkpoint is not set: the VAE has random weights (fine for speed tests only)")
        seeded_init(vae, run.experiment.run.seed)
    return vae.to(device=run.device, dtype=run.dtype).eval().requires_grad_(False)


# ---- text encoders -----------------------------------------------------------------------


def build_umt5(run: RunContext) -> UMT5TextEncoder:
    from longlive.model.text import UMT5TextEncoder

    model = run.experiment.model
    path, tokenizer = model.text_encoder_path, model.tokenizer_path
    if path is None:  # validation says so first (CorePlugin.longlive_configure)
        raise ConfigError(UMT5_NEEDS_PATH)
    common = dict(text_len=run.preset.text_len, device=run.device, dtype=run.dtype, where="model.text_encoder_path")
    if Path(path).is_dir():
        return UMT5TextEncoder.from_hf_dir(path, tokenizer=tokenizer, **common)
    if tokenizer is None:
        raise ConfigError(UMT5_NEEDS_TOKENIZER)
    return UMT5TextEncoder.from_wan_checkpoint(path, tokenizer=tokenizer, **common)


UMT5_NEEDS_PATH = ("model.text_encoder_path: the umt5-xxl text encoder needs a local directory (HF UMT5 layout with "
                   "tokenizer files); set it, or use text_encoder = \"random\" for speed tests")
UMT5_NEEDS_TOKENIZER = ("model.tokenizer_path: Wan's UMT5 .pth holds no tokenizer; set tokenizer_path to a local "
                        "umt5-xxl tokenizer directory")


def build_random_text(run: RunContext) -> RandomTextEncoder:
    from longlive.model.random_text import RandomTextEncoder

    preset = run.preset
    return RandomTextEncoder(preset.text_dim, preset.text_len, tokens=min(preset.text_len, 128),
                             device=run.device, dtype=run.dtype)


# ---- samplers ----------------------------------------------------------------------------


def build_unipc(config: SamplerConfig) -> Sampler:
    from longlive.sampling import unipc_sampler

    return unipc_sampler(config.steps, shift=config.shift)


def build_fewstep(config: SamplerConfig) -> Sampler:
    from longlive.sampling import fewstep_sampler

    return fewstep_sampler(config.steps, shift=config.shift)
