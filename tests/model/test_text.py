"""UMT5 text encoder: parity with a plain UMT5EncoderModel, Wan key map round trip, path errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from longlive.errors import ConfigError
from longlive.model.text import UMT5TextEncoder, convert_wan_t5_state_dict

TEXT_LEN = 8
WORDS = "a cat dog runs on the beach at sunset in snow red blue car city night".split()
PROMPTS = ["a cat runs", "dog on the  beach &amp; sunset", "a red car in the city at night in snow"]


def _tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with T5's special ids (pad 0, eos 1, unk 2) that appends </s>."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _hf_model() -> UMT5EncoderModel:
    config = UMT5Config(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                        feed_forward_proj="gated-gelu")
    torch.manual_seed(0)
    model = UMT5EncoderModel(config).eval()
    with torch.no_grad():  # norms start at 1: perturb everything so a swapped key changes outputs
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _wan_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF -> Wan names, written out from the reference table (the inverse of the code's map)."""
    block = {"layer.0.SelfAttention.q": "attn.q", "layer.0.SelfAttention.k": "attn.k",
             "layer.0.SelfAttention.v": "attn.v", "layer.0.SelfAttention.o": "attn.o",
             "layer.0.SelfAttention.relative_attention_bias": "pos_embedding.embedding",
             "layer.0.layer_norm": "norm1", "layer.1.DenseReluDense.wi_0": "ffn.gate.0",
             "layer.1.DenseReluDense.wi_1": "ffn.fc1", "layer.1.DenseReluDense.wo": "ffn.fc2",
             "layer.1.layer_norm": "norm2"}
    wan = {"token_embedding.weight": hf["shared.weight"].clone(),
           "norm.weight": hf["encoder.final_layer_norm.weight"].clone()}
    for key, value in hf.items():
        if key.startswith("encoder.block."):
            i, rest = key[len("encoder.block."):].split(".", 1)
            wan[f"blocks.{i}.{block[rest.removesuffix('.weight')]}.weight"] = value.clone()
    return wan


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> tuple[Path, UMT5EncoderModel]:
    path = tmp_path_factory.mktemp("umt5")
    model = _hf_model()
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path, model


def test_encode_matches_plain_umt5(hf_dir) -> None:
    path, plain = hf_dir
    enc = UMT5TextEncoder.from_hf_dir(path, text_len=TEXT_LEN, dtype=torch.float32)
    out = enc.encode(PROMPTS)
    assert out.shape == (3, TEXT_LEN, 32) and out.dtype == torch.float32

    cleaned = ["a cat runs", "dog on the beach & sunset", PROMPTS[2]]  # Wan's whitespace clean
    ref_in = _tokenizer()(cleaned, return_tensors="pt", padding="max_length", truncation=True,
                          max_length=TEXT_LEN, add_special_tokens=True)
    with torch.no_grad():
        ref = plain(input_ids=ref_in.input_ids, attention_mask=ref_in.attention_mask).last_hidden_state
    lengths = ref_in.attention_mask.sum(dim=1).tolist()
    assert lengths == [4, 7, TEXT_LEN]  # words + </s>; the last prompt is truncated
    for b, n in enumerate(lengths):
        assert (out[b, :n] - ref[b, :n]).abs().max() < 1e-5
        assert torch.count_nonzero(out[b, n:]) == 0
    assert ref[0, lengths[0]:].abs().min() > 0  # the raw encoder's padded rows are not zero


def test_wan_checkpoint_round_trip(hf_dir, tmp_path) -> None:
    path, plain = hf_dir
    hf_sd = plain.state_dict()
    wan_sd = _wan_state_dict(hf_sd)
    converted = convert_wan_t5_state_dict(wan_sd)
    assert set(converted) == set(hf_sd)
    assert all(torch.equal(converted[k], hf_sd[k]) for k in hf_sd)

    ckpt = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(wan_sd, ckpt)
    from_wan = UMT5TextEncoder.from_wan_checkpoint(ckpt, tokenizer=path, text_len=TEXT_LEN, dtype=torch.float32)
    from_hf = UMT5TextEncoder.from_hf_dir(path, tokenizer=_tokenizer(), text_len=TEXT_LEN, dtype=torch.float32)
    assert from_wan.model.config.num_heads == 4 and from_wan.model.config.d_kv == 8
    assert from_wan.model.shared.weight is from_wan.model.encoder.embed_tokens.weight  # one embedding
    assert torch.equal(from_wan.encode(PROMPTS), from_hf.encode(PROMPTS))

    with pytest.raises(ConfigError, match="unknown layout"):
        convert_wan_t5_state_dict({**wan_sd, "blocks.0.attn.qkv.weight": torch.zeros(1)})


def test_path_errors(hf_dir, tmp_path) -> None:
    path, _ = hf_dir
    with pytest.raises(ConfigError, match="is not a directory.*config.json"):
        UMT5TextEncoder.from_hf_dir(tmp_path / "missing")
    with pytest.raises(ConfigError, match="lacks config.json"):
        UMT5TextEncoder.from_hf_dir(tmp_path)
    with pytest.raises(ConfigError, match="holds no tokenizer.json or spiece.model"):
        UMT5TextEncoder.from_hf_dir(path, tokenizer=tmp_path)
    with pytest.raises(ConfigError, match="tokenizer folder .* does not exist"):
        UMT5TextEncoder.from_wan_checkpoint(tmp_path / "t5.pth", tokenizer=tmp_path / "nope")
    with pytest.raises(ConfigError, match="does not exist"):
        UMT5TextEncoder.from_wan_checkpoint(tmp_path / "t5.pth", tokenizer=path)
