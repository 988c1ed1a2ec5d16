"""VAE key maps (ours <-> Wan original <-> diffusers), format detection and strict loading."""
from __future__ import annotations

import re

import attrs
import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file

from longlive.errors import ConfigError
from longlive.model.vae import VAE_PRESETS, WanVAE
from longlive.model.vae_convert import (
    detect_format,
    diffusers_to_longlive,
    load_vae_weights,
    longlive_to_diffusers,
    longlive_to_wan,
    wan_to_longlive,
)

CONFIG = VAE_PRESETS["debug"]
N = CONFIG.num_res_blocks


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return WanVAE(CONFIG).state_dict()


def _official_wan_to_diffusers(key: str) -> str:
    """Wan -> diffusers key rules as diffusers' scripts/convert_wan_to_diffusers.py `convert_vae_22` states them.

    Written independently of our converter: resnets vs resampler are told apart by the part
    name (`resample`/`time_conv`), not by index.
    """
    residual = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.",
                "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}
    top = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv."}
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old):]
    side, rest = key.split(".", 1)
    if rest.startswith("conv1."):
        return f"{side}.conv_in.{rest[len('conv1.'):]}"
    if rest.startswith("head.0."):
        return f"{side}.norm_out.{rest[len('head.0.'):]}"
    if rest.startswith("head.2."):
        return f"{side}.conv_out.{rest[len('head.2.'):]}"
    m = re.match(r"middle\.(\d)\.(.*)", rest)
    if m:
        index, tail = int(m.group(1)), m.group(2)
        if index == 1:
            return f"{side}.mid_block.attentions.0.{tail}"
        for old, new in residual.items():
            tail = tail.replace(old, new)
        return f"{side}.mid_block.resnets.{index // 2}.{tail}"
    m = re.match(r"(down|up)samples\.(\d+)\.(down|up)samples\.(\d+)\.(.*)", rest)
    assert m, key
    kind, block, _, entry, tail = m.groups()
    if tail.startswith(("resample.", "time_conv.")):
        return f"{side}.{kind}_blocks.{block}.{kind}sampler.{tail}"
    for old, new in residual.items():
        tail = tail.replace(old, new)
    return f"{side}.{kind}_blocks.{block}.resnets.{entry}.{tail}"


def _diffusers_model() -> AutoencoderKLWan:
    return AutoencoderKLWan(base_dim=CONFIG.base_dim, decoder_base_dim=CONFIG.decoder_base_dim, z_dim=CONFIG.z_dim,
                            is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                            latents_mean=[0.0] * CONFIG.z_dim, latents_std=[1.0] * CONFIG.z_dim)


def test_round_trips_keep_tensors(state):
    for forward, backward in [(longlive_to_wan, wan_to_longlive),
                              (lambda s: longlive_to_diffusers(s, num_res_blocks=N),
                               lambda s: diffusers_to_longlive(s, num_res_blocks=N))]:
        there = forward(state)
        assert len(there) == len(state) and set(there) != set(state)
        back = backward(there)
        assert list(back) == list(state)
        assert all(back[k] is state[k] for k in state)


def test_wan_map_agrees_with_official_rules(state):
    """ours -> Wan -> (official rules) -> diffusers equals ours -> diffusers, key by key."""
    wan = longlive_to_wan({k: k for k in state})  # values carry our key names
    ours_to_diffusers = longlive_to_diffusers({k: k for k in state}, num_res_blocks=N)
    via_wan = {_official_wan_to_diffusers(wan_key): ours for wan_key, ours in wan.items()}
    assert via_wan == {d: ours for d, ours in ours_to_diffusers.items()}
    assert set(via_wan) == set(_diffusers_model().state_dict())
    assert "encoder.downsamples.1.downsamples.2.resample.1.weight" in wan
    assert "decoder.upsamples.0.upsamples.3.time_conv.weight" in wan
    assert "encoder.downsamples.1.downsamples.0.residual.2.weight" in wan


def test_diffusers_shapes_match(state):
    theirs = _diffusers_model().state_dict()
    converted = longlive_to_diffusers(state, num_res_blocks=N)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


@pytest.mark.parametrize("fmt", ["wan", "diffusers", "longlive"])
def test_load_each_format(state, tmp_path, fmt):
    if fmt == "wan":
        path = tmp_path / "Wan2.2_VAE.pth"
        torch.save(longlive_to_wan(state), path)
    else:
        path = tmp_path / "vae.safetensors"
        data = longlive_to_diffusers(state, num_res_blocks=N) if fmt == "diffusers" else state
        save_file({k: v.contiguous() for k, v in data.items()}, str(path))
    fresh = WanVAE(CONFIG)
    assert detect_format(torch.load(path) if fmt == "wan" else data) == fmt
    assert load_vae_weights(fresh, path) == fmt
    loaded = fresh.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_dit_checkpoint_is_rejected(tmp_path):
    dit = {"patch_embedding.weight": torch.zeros(8, 48, 1, 2, 2), "blocks.0.self_attn.q.weight": torch.zeros(8, 8),
           "head.head.weight": torch.zeros(4, 8)}
    path = tmp_path / "dit.safetensors"
    save_file(dit, str(path))
    with pytest.raises(ConfigError, match="does not look like a Wan2.2 VAE"):
        load_vae_weights(WanVAE(CONFIG), path)
    with pytest.raises(ConfigError, match="missing"):
        load_vae_weights(WanVAE(CONFIG), path, format="wan")


def test_other_preset_weights_are_rejected(state, tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    wider = WanVAE(attrs.evolve(CONFIG, name="wider", base_dim=16))
    with pytest.raises(ConfigError, match="wrong shape"):
        load_vae_weights(wider, path)
    with pytest.raises(ConfigError, match="format="):
        load_vae_weights(wider, path, format="pickle")
