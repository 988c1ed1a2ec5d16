"""ToyTextEncoder: deterministic, zero padding, words and positions distinguishable."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from longlive.errors import ConfigError
from longlive_plugins.toyworld.text import ToyTextEncoder, tokenize, word_vector

CAPTION = "a small red circle moves up-left quickly and bounces on a dark blue background"


def test_deterministic_across_instances_and_pinned():
    a = ToyTextEncoder().encode([CAPTION, "a blue square"])
    b = ToyTextEncoder().encode([CAPTION, "a blue square"])
    assert a.shape == (2, 16, 32) and a.dtype == torch.float32 and torch.equal(a, b)
    # Pinned: crc32("red") seeds numpy's PCG64; a change here changes every trained toy model.
    np.testing.assert_allclose(word_vector("red", 32)[:3], [0.02390662, 0.25159833, 0.06026106], atol=1e-6)
    assert np.isclose(np.linalg.norm(word_vector("red", 32)), 1.0)


def test_padding_is_zero_and_words_are_not():
    out = ToyTextEncoder(dim=8, text_len=6).encode(["Red circle", ""])
    assert tokenize("Red circle") == ["red", "circle"]
    assert out[0, :2].norm(dim=-1).min() > 0.5
    assert torch.count_nonzero(out[0, 2:]) == 0 and torch.count_nonzero(out[1]) == 0


def test_different_words_and_positions_differ():
    enc = ToyTextEncoder()
    out = enc.encode(["a red circle", "a blue circle", "circle a red"])
    assert torch.equal(out[0, 0], out[1, 0]) and torch.equal(out[0, 2], out[1, 2])  # same word, same place
    assert (out[0, 1] - out[1, 1]).norm() > 0.5  # red vs blue
    assert not torch.equal(out[0, 2], out[2, 0])  # same word, other position
    words = tokenize(CAPTION)
    assert "up-left" in words and len(words) == 14
    vecs = np.stack([word_vector(w, 32) for w in set(words)])
    cos = vecs @ vecs.T - np.eye(len(vecs))
    assert np.abs(cos).max() < 0.8  # distinct words are far from parallel


def test_truncation_warns_and_input_is_checked(caplog):
    enc = ToyTextEncoder(dim=4, text_len=3)
    with caplog.at_level(logging.WARNING):
        out = enc.encode(["one two three four"])
    assert "keeping the first 3" in caplog.text and torch.count_nonzero(out[0, 2]) > 0
    with pytest.raises(ConfigError, match="list of prompts"):
        enc.encode("a red circle")
    with pytest.raises(ConfigError, match="must be even"):
        ToyTextEncoder(dim=5)


def test_to_moves_outputs():
    enc = ToyTextEncoder().to(torch.float64)
    assert enc.encode(["a red circle"]).dtype == torch.float64
    assert list(enc.parameters()) == [] and enc.state_dict() == {}
