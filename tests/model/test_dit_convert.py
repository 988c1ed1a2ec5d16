"""DiT checkpoint formats: LongLive model_bf16.pt, original Wan shards, diffusers; clear errors on wrong files."""
from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from longlive.errors import ConfigError
from longlive.model.checkpoint import save_safetensors_atomic
from longlive.model.convert import (detect_format, diffusers_to_ours, load_dit_state, load_dit_weights,
                                    ours_to_diffusers, strip_wrappers)
from longlive.model.dit import WanDiT
from longlive.model.presets import dit_preset


def _source() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = WanDiT(dit_preset("debug"), attention="sdpa")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_loaded(model: WanDiT, source: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == source.keys()
    for k, v in source.items():
        assert torch.equal(state[k], v), k


def test_diffusers_rename_round_trip_and_completeness():
    src = _source()
    theirs = ours_to_diffusers(src)
    cfg = dit_preset("debug")
    ref = WanTransformer3DModel(patch_size=cfg.patch, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                                in_channels=48, out_channels=48, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                                ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers)
    assert set(theirs) == set(ref.state_dict())
    assert "blocks.0.norm2.weight" in theirs and "blocks.0.norm3.weight" in src  # the norm2/norm3 swap
    back = diffusers_to_ours(theirs)
    assert back.keys() == src.keys() and all(back[k] is src[k] for k in src)


def test_longlive_pt_with_wrappers_and_nesting(tmp_path):
    src = _source()
    wrapped = {}
    for k, v in src.items():  # FSDP wraps each block; torch.compile wraps the model
        k = k.replace("blocks.0.", "blocks.0._fsdp_wrapped_module.")
        wrapped[f"model._orig_mod.{k}"] = v.to(torch.bfloat16)
    torch.save(wrapped, tmp_path / "model_bf16.pt")
    torch.save({"generator": wrapped, "step": torch.tensor(3)}, tmp_path / "train_ckpt.pt")
    for name in ("model_bf16.pt", "train_ckpt.pt"):
        model = WanDiT(dit_preset("debug"))
        assert load_dit_weights(model, tmp_path / name) == "longlive"
        _assert_loaded(model, {k: v.to(torch.bfloat16).float() for k, v in src.items()})


def test_wan_shards_and_diffusers_files(tmp_path):
    src = _source()
    keys = sorted(src)
    shard_dir = tmp_path / "wan"
    save_safetensors_atomic({k: src[k] for k in keys[: len(keys) // 2]}, shard_dir / "diffusion_pytorch_model-00001-of-00002.safetensors")
    save_safetensors_atomic({k: src[k] for k in keys[len(keys) // 2:]}, shard_dir / "diffusion_pytorch_model-00002-of-00002.safetensors")
    model = WanDiT(dit_preset("debug"))
    assert load_dit_weights(model, shard_dir) == "wan"
    _assert_loaded(model, src)

    save_safetensors_atomic(ours_to_diffusers(src), tmp_path / "diffusers.safetensors")
    model = WanDiT(dit_preset("debug"))
    assert load_dit_weights(model, tmp_path / "diffusers.safetensors", format="diffusers") == "diffusers"
    _assert_loaded(model, src)
    model = WanDiT(dit_preset("debug"))
    assert load_dit_weights(model, tmp_path / "diffusers.safetensors") == "diffusers"  # auto-detected


def test_detect_format():
    src = _source()
    assert detect_format(src) == "wan"
    assert detect_format(ours_to_diffusers(src)) == "diffusers"
    assert detect_format(strip_wrappers({f"module.model.{k}": v for k, v in src.items()})) == "longlive"


def test_vae_given_as_dit_is_one_config_error(tmp_path):
    vae_like = {"encoder.conv1.weight": torch.zeros(8, 12, 3, 3, 3), "decoder.head.0.gamma": torch.zeros(8)}
    save_safetensors_atomic(vae_like, tmp_path / "vae.safetensors")
    with pytest.raises(ConfigError, match=r"missing \(.*unexpected \(decoder\.head\.0\.gamma"):
        load_dit_weights(WanDiT(dit_preset("debug")), tmp_path / "vae.safetensors")


def test_wrong_preset_is_one_config_error(tmp_path):
    small = WanDiT(dit_preset("small")).state_dict()
    torch.save({f"model.{k}": v for k, v in small.items()}, tmp_path / "small.pt")
    with pytest.raises(ConfigError, match=r"wrong shape .*model\.preset"):
        load_dit_weights(WanDiT(dit_preset("debug")), tmp_path / "small.pt")
    with pytest.raises(ConfigError, match="checkpoint_format"):
        load_dit_weights(WanDiT(dit_preset("debug")), tmp_path / "small.pt", format="sharded")


def test_5b_longlive_state_loads_on_meta():
    """The 5B preset takes a LongLive-named state dict of the right shapes (meta tensors: no 20 GB)."""
    with torch.device("meta"):
        model = WanDiT(dit_preset("wan2.2-ti2v-5b"))
        state = {f"model.{k}": torch.empty(v.shape, dtype=torch.bfloat16) for k, v in model.state_dict().items()}
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in model.parameters())
    assert load_dit_state(model, state) == "longlive"
    assert model.blocks[29].ffn[0].weight.dtype == torch.bfloat16  # assigned, not copied
    del state["model.blocks.7.cross_attn.norm_k.weight"]
    with pytest.raises(ConfigError, match=r"1 missing \(blocks\.7\.cross_attn\.norm_k\.weight\)"):
        load_dit_state(model, state)
