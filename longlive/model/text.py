"""UMT5 text encoder (Wan's umt5-xxl) on top of transformers' UMT5EncoderModel.

Loads a Hugging Face folder or Wan's `models_t5_umt5-xxl-enc-bf16.pth` (keys mapped by
`convert_wan_t5_state_dict`), never downloads, and encodes prompts the way Wan does: pad/truncate
to `text_len` tokens, run the encoder with the padding mask, and zero the padded positions.
"""
from __future__ import annotations

import html
import json
import logging
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel

from longlive.errors import ConfigError
from longlive.model.checkpoint import load_strict, read_state_dict

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
# Constants of Wan's T5 (`wan/modules/t5.py`) that the weights do not carry.
_WAN_MAX_DISTANCE = 128
_WAN_NORM_EPS = 1e-6

# Wan name inside `blocks.{i}.` -> HF name inside `encoder.block.{i}.`
_WAN_BLOCK_KEYS = {
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm1.weight": "layer.0.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # the GELU branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # the linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
}
_WAN_TOP_KEYS = {
    "token_embedding.weight": ("shared.weight", "encoder.embed_tokens.weight"),
    "norm.weight": ("encoder.final_layer_norm.weight",),
}
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(.+)")


def convert_wan_t5_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Wan T5Encoder keys to transformers' UMT5EncoderModel keys (tensors are shared, not copied)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key in _WAN_TOP_KEYS:
            out.update({name: value for name in _WAN_TOP_KEYS[key]})
            continue
        match = _BLOCK_RE.fullmatch(key)
        if match and match.group(2) in _WAN_BLOCK_KEYS:
            out[f"encoder.block.{match.group(1)}.{_WAN_BLOCK_KEYS[match.group(2)]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(f"Wan T5 state dict: {len(unknown)} keys of unknown layout (first: {sorted(unknown)[:3]}); "
                          "expected Wan's T5Encoder (models_t5_umt5-xxl-enc-bf16.pth)")
    return out


def umt5_config_from_wan_state_dict(sd: Mapping[str, torch.Tensor], *, where: str = "text encoder") -> UMT5Config:
    """Derive the UMT5Config (sizes, heads, buckets) from the shapes of a Wan T5Encoder state dict."""
    needed = ("token_embedding.weight", "blocks.0.attn.q.weight", "blocks.0.ffn.fc1.weight",
              "blocks.0.pos_embedding.embedding.weight")
    missing = [k for k in needed if k not in sd]
    if missing:
        raise ConfigError(f"{where}: the Wan T5 checkpoint lacks {missing}; expected a UMT5 encoder "
                          "(per-layer relative position embeddings), e.g. models_t5_umt5-xxl-enc-bf16.pth")
    vocab, dim = sd["token_embedding.weight"].shape
    num_buckets, num_heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
    dim_attn = sd["blocks.0.attn.q.weight"].shape[0]
    num_layers = len({m.group(1) for k in sd if (m := _BLOCK_RE.fullmatch(k))})
    return UMT5Config(
        vocab_size=vocab, d_model=dim, d_kv=dim_attn // num_heads, d_ff=sd["blocks.0.ffn.fc1.weight"].shape[0],
        num_layers=num_layers, num_heads=num_heads, relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=_WAN_MAX_DISTANCE, layer_norm_epsilon=_WAN_NORM_EPS,
        feed_forward_proj="gated-gelu",  # Wan: fc1(x) * tanh-GELU(gate(x)) == HF gelu_new gating
        dropout_rate=0.0,
    )


def clean_prompt(text: str) -> str:
    """Wan's clean='whitespace': HTML-unescape twice, collapse whitespace.

    Wan also runs ftfy.fix_text first (mojibake, curly quotes); ftfy is not a dependency here,
    so prompts with such characters can tokenize differently from Wan.
    """
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def load_tokenizer(path: str | os.PathLike, *, where: str = "text encoder") -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder (tokenizer.json or spiece.model); never downloads."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{where}: tokenizer folder {str(path)!r} does not exist; give a local folder "
                          f"holding {' or '.join(_TOKENIZER_FILES)} (e.g. Wan's google/umt5-xxl)")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ConfigError(f"{where}: {str(path)!r} holds no {' or '.join(_TOKENIZER_FILES)}; "
                          "point it at the tokenizer folder (google/umt5-xxl layout)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _check_hf_dir(path: Path, where: str) -> None:
    expected = "config.json, weights (*.safetensors or pytorch_model*.bin)"
    if not path.is_dir():
        raise ConfigError(f"{where}: {str(path)!r} is not a directory; expected a Hugging Face UMT5 "
                          f"encoder folder with {expected}")
    if not (path / "config.json").is_file() or not any(any(path.glob(g)) for g in _WEIGHT_GLOBS):
        raise ConfigError(f"{where}: {str(path)!r} lacks config.json or weight files; expected {expected}")
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type != "umt5":
        raise ConfigError(f"{where}: {str(path)!r} holds a {model_type!r} model, not 'umt5'; "
                          "give the UMT5 text encoder folder (diffusers layout: text_encoder/)")


class UMT5TextEncoder(nn.Module):
    """A frozen UMT5 encoder and its tokenizer: prompts -> [B, text_len, dim], padding zeroed."""

    def __init__(self, model: UMT5EncoderModel, tokenizer: PreTrainedTokenizerBase, *,
                 text_len: int = 512, clean: bool = True) -> None:
        super().__init__()
        if text_len < 1:
            raise ConfigError(f"text encoder: text_len must be >= 1; got {text_len}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.clean = clean

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @classmethod
    def from_hf_dir(cls, model_dir: str | os.PathLike, *,
                    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
                    text_len: int = 512, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                    where: str = "text encoder") -> UMT5TextEncoder:
        """Load a Hugging Face UMT5EncoderModel folder; the tokenizer defaults to the same folder."""
        model_dir = Path(model_dir)
        _check_hf_dir(model_dir, where)
        tok = _as_tokenizer(model_dir if tokenizer is None else tokenizer, where)
        model = UMT5EncoderModel.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
        log.info("UMT5 text encoder from %s: %d layers, dim %d", model_dir, model.config.num_layers,
                 model.config.d_model)
        return cls(model.to(device), tok, text_len=text_len)

    @classmethod
    def from_wan_checkpoint(cls, checkpoint: str | os.PathLike, *,
                            tokenizer: str | os.PathLike | PreTrainedTokenizerBase, text_len: int = 512,
                            dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                            where: str = "text encoder") -> UMT5TextEncoder:
        """Load Wan's T5 encoder weights (.pth); the config is derived from the tensor shapes."""
        tok = _as_tokenizer(tokenizer, where)
        wan_sd = read_state_dict(checkpoint, where=where)
        config = umt5_config_from_wan_state_dict(wan_sd, where=where)
        with torch.device("meta"):  # no random init of ~5.7 B parameters; load_strict assigns
            model = UMT5EncoderModel(config)
        load_strict(model, convert_wan_t5_state_dict(wan_sd), what=f"UMT5 text encoder from {checkpoint}")
        model.tie_weights()  # assign= made two Parameters of the embedding; keep one, as from_pretrained does
        log.info("UMT5 text encoder from %s: %d layers, dim %d", checkpoint, config.num_layers, config.d_model)
        return cls(model.to(device=device, dtype=dtype), tok, text_len=text_len)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, both [B, text_len] (int64), padded and truncated as Wan does."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a list of str; got {type(prompts).__name__}")
        texts = [clean_prompt(p) for p in prompts] if self.clean else list(prompts)
        enc = self.tokenizer(texts, return_tensors="pt", padding="max_length", truncation=True,
                             max_length=self.text_len, add_special_tokens=True)
        full = int((enc.attention_mask.sum(dim=1) == self.text_len).sum())  # CPU tensors: no device sync
        if full:
            log.warning("%d of %d prompts fill all %d text tokens; longer prompts are truncated",
                        full, len(texts), self.text_len)
        return enc.input_ids, enc.attention_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] ids and mask -> [B, L, dim] hidden states, exactly 0 where the mask is 0."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, D]
        return hidden.masked_fill(attention_mask[..., None] == 0, 0.0)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> [B, text_len, dim] on the model's device and dtype; padded positions are 0."""
        ids, mask = self.tokenize(prompts)
        device = self.model.shared.weight.device
        return self(ids.to(device), mask.to(device))


def _as_tokenizer(tokenizer: str | os.PathLike | PreTrainedTokenizerBase, where: str) -> PreTrainedTokenizerBase:
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    return load_tokenizer(tokenizer, where=where)
