"""The core's component factories and task entry points (heavy modules are imported lazily)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from longlive.errors import ConfigError

if TYPE_CHECKING:
    from longlive.config import SamplerConfig
    from longlive.run import RunContext

log = logging.getLogger(__name__)


# ---- codecs ------------------------------------------------------------------------------


def build_wan_vae(run: RunContext):
    from longlive.model.vae import VAE_PRESETS, WanVAE
    from longlive.model.vae_convert import load_vae_weights

    return _place_vae(run, WanVAE(VAE_PRESETS["wan2.2-vae"]), load_vae_weights)


def build_debug_vae(run: RunContext):
    from longlive.model.vae import VAE_PRESETS, WanVAE
    from longlive.model.vae_convert import load_vae_weights

    return _place_vae(run, WanVAE(VAE_PRESETS["debug"]), load_vae_weights)


def _place_vae(run: RunContext, vae, load_weights):
    path = run.experiment.model.codec_checkpoint
    if path is not None:
        load_weights(vae, path)
    else:
        log.warning("model.codec_checkpoint is not set: the VAE has random weights (fine for speed tests only)")
        seeded_init(vae, run.experiment.run.seed)
    return vae.to(device=run.device, dtype=run.dtype).eval().requires_grad_(False)


# ---- text encoders -----------------------------------------------------------------------


def build_umt5(run: RunContext):
    from longlive.model.text import UMT5TextEncoder

    path = run.experiment.model.text_encoder_path
    if path is None:
        raise ConfigError("model.text_encoder_path: the umt5-xxl text encoder needs a local directory "
                          "(HF UMT5 layout with tokenizer files); set it, or use text_encoder = \"random\" for speed tests")
    preset = dit_preset(run)
    tokenizer = run.experiment.model.tokenizer_path
    common = dict(text_len=preset.text_len, device=run.device, dtype=run.dtype, where="model.text_encoder_path")
    if Path(path).is_dir():
        return UMT5TextEncoder.from_hf_dir(path, tokenizer=tokenizer, **common)
    if tokenizer is None:
        raise ConfigError("model.tokenizer_path: Wan's UMT5 .pth holds no tokenizer; set tokenizer_path to a local "
                          "umt5-xxl tokenizer directory")
    return UMT5TextEncoder.from_wan_checkpoint(path, tokenizer=tokenizer, **common)


class RandomTextEncoder:
    """Deterministic pseudo-random prompt embeddings, for benchmarks and tests (no semantics)."""

    def __init__(self, dim: int, text_len: int, tokens: int, device: torch.device, dtype: torch.dtype) -> None:
        self.dim, self.text_len, self.tokens = dim, text_len, min(tokens, text_len)
        self.device, self.dtype = device, dtype

    def encode(self, prompts: list[str]) -> torch.Tensor:
        import zlib

        out = torch.zeros(len(prompts), self.text_len, self.dim, dtype=self.dtype, device=self.device)
        for i, prompt in enumerate(prompts):
            g = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
            out[i, : self.tokens] = torch.randn(self.tokens, self.dim, generator=g).to(out)
        return out  # [B, text_len, dim], positions after `tokens` zero like padding


def build_random_text(run: RunContext):
    preset = dit_preset(run)
    return RandomTextEncoder(preset.text_dim, preset.text_len, tokens=min(preset.text_len, 128),
                             device=run.device, dtype=run.dtype)


# ---- samplers ----------------------------------------------------------------------------


def build_unipc(config: SamplerConfig):
    from longlive.sampling import make_sampler

    return make_sampler("unipc", config.steps, shift=config.shift)


def build_fewstep(config: SamplerConfig):
    from longlive.sampling import make_sampler

    return make_sampler("fewstep", config.steps, shift=config.shift)


# ---- helpers shared by tasks -------------------------------------------------------------


def dit_preset(run: RunContext):
    return run.components.get("dit_preset", run.experiment.model.preset, where="model.preset").value


def seeded_init(module: torch.nn.Module, seed: int) -> None:
    """Random weights from the run seed, drawn on the parameters' device (benchmarks, training from
    scratch): matrices N(0, 1/fan_in), vectors 1 (weights) or 0 (biases) plus N(0, 0.02)."""
    with torch.no_grad():
        for i, (name, p) in enumerate(module.named_parameters()):
            g = torch.Generator(device=p.device).manual_seed(seed * 100_003 + i)
            noise = torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32)
            if p.ndim <= 1:  # norm gains around 1, biases around 0
                base = 1.0 if name.endswith(("weight", "gamma")) else 0.0
                p.copy_(noise * 0.02 + base)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
            del noise


# ---- tasks -------------------------------------------------------------------------------


def generate(run: RunContext) -> dict:
    from longlive.pipeline import run_generation

    return run_generation(run)


def bench(run: RunContext) -> dict:
    from longlive.bench import run_benchmark

    return run_benchmark(run)


def train(run: RunContext) -> dict:
    from longlive.train.trainer import run_training

    return run_training(run)
