"""Named shape presets of the Wan2.2-family DiT: the real 5B model and tiny ones for tests and the toy world."""
from __future__ import annotations

import difflib
import types
from typing import Mapping

import attrs

from longlive.errors import ConfigError


PREDICTIONS = ("velocity", "sample")


@attrs.frozen(kw_only=True)
class DiTConfig:
    """Every shape of a Wan2.2-TI2V-style DiT; the model derives everything else from it."""

    name: str = "custom"  # the preset name, for error messages
    dim: int
    ffn_dim: int
    num_layers: int
    num_heads: int
    in_channels: int  # latent channels in
    out_channels: int  # latent channels out
    text_dim: int  # width of the text encoder's output
    text_len: int  # text tokens after zero padding
    freq_dim: int  # width of the sinusoidal timestep embedding
    patch: tuple[int, int, int] = attrs.field(default=(1, 2, 2), converter=tuple)  # (t, h, w)
    eps: float = 1e-6
    rope_theta: float = 10000.0
    # What the output head predicts: "velocity" (Wan: v = eps - x0) or "sample" (x0; the model
    # turns it into the velocity (x_t - x0) / sigma, so callers always get a velocity). Predicting
    # the clean sample suits pixel-like latents with wide patches (Li & He 2025, "Back to Basics").
    prediction: str = "velocity"

    def __attrs_post_init__(self) -> None:
        where = f"DiT preset {self.name!r}"
        for field in ("dim", "ffn_dim", "num_layers", "num_heads", "in_channels", "out_channels",
                      "text_dim", "text_len", "freq_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{where}: {field}={value!r} must be a positive integer")
        if len(self.patch) != 3 or any(not isinstance(p, int) or p <= 0 for p in self.patch):
            raise ConfigError(f"{where}: patch={self.patch!r} must be three positive integers (t, h, w)")
        if self.dim % self.num_heads:
            raise ConfigError(
                f"{where}: dim={self.dim} is not divisible by num_heads={self.num_heads}; "
                "choose num_heads dividing dim"
            )
        if self.head_dim % 2 or self.head_dim < 6:
            raise ConfigError(
                f"{where}: head_dim=dim/num_heads={self.head_dim} must be even and >= 6 "
                "(3-D RoPE splits it into three even parts)"
            )
        if self.freq_dim % 2:
            raise ConfigError(f"{where}: freq_dim={self.freq_dim} must be even (cos and sin halves)")
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"{where}: prediction={self.prediction!r} is not known; use one of {', '.join(PREDICTIONS)}")
        if self.prediction == "sample" and self.in_channels != self.out_channels:
            raise ConfigError(f"{where}: prediction='sample' needs in_channels == out_channels "
                              f"({self.in_channels} != {self.out_channels})")
        if self.eps <= 0 or self.rope_theta <= 0:
            raise ConfigError(f"{where}: eps={self.eps} and rope_theta={self.rope_theta} must be positive")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_channels(self) -> int:
        """Output features per token: out_channels x prod(patch)."""
        pt, ph, pw = self.patch
        return self.out_channels * pt * ph * pw


DIT_PRESETS: Mapping[str, DiTConfig] = types.MappingProxyType({
    "wan2.2-ti2v-5b": DiTConfig(
        name="wan2.2-ti2v-5b", dim=3072, ffn_dim=14336, num_layers=30, num_heads=24,
        in_channels=48, out_channels=48, text_dim=4096, text_len=512, freq_dim=256,
    ),
    "debug": DiTConfig(
        name="debug", dim=64, ffn_dim=128, num_layers=2, num_heads=2,
        in_channels=48, out_channels=48, text_dim=32, text_len=16, freq_dim=256,
    ),
    "small": DiTConfig(
        name="small", dim=128, ffn_dim=256, num_layers=4, num_heads=4,
        in_channels=48, out_channels=48, text_dim=64, text_len=16, freq_dim=256,
    ),
})


def dit_preset(name: str) -> DiTConfig:
    """The preset called `name`; an unknown name is a ConfigError suggesting the nearest one."""
    try:
        return DIT_PRESETS[name]
    except KeyError:
        near = difflib.get_close_matches(name, list(DIT_PRESETS), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(
            f"model.preset={name!r} is not a known DiT preset; {hint}valid: {sorted(DIT_PRESETS)}"
        ) from None
