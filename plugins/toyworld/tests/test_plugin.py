"""The toy DiT preset follows [plugins.toyworld]; the shipped weights fit its defaults and the size limit."""
from __future__ import annotations

from pathlib import Path

import pytest

from longlive.config import experiment_from_table
from longlive.errors import ConfigError
from longlive.run import make_run

WEIGHTS = Path(__file__).parents[1] / "weights"


def _run(**toyworld):
    table = {"run": {"name": "t", "task": "toy_eval", "device": "cpu", "plugins": ["toyworld"]},
             "model": {"preset": "toy", "codec": "toy-patch", "text_encoder": "toy-words"},
             "sampler": {"height": 64, "width": 64, "num_frames": 8, "frames_per_chunk": 4, "window_frames": 8},
             "plugins": {"toyworld": toyworld}}
    return make_run(experiment_from_table(table), create_dir=False)


def test_toy_preset_follows_the_plugin_config():
    preset = _run(model_dim=128, model_layers=3, prediction="velocity").components.get("dit_preset", "toy", where="model.preset").value
    assert (preset.dim, preset.num_layers, preset.num_heads, preset.ffn_dim, preset.prediction) == \
        (128, 3, 2, 512, "velocity")
    with pytest.raises(ConfigError, match="model_dim: 200 must be a multiple of 64"):
        _run(model_dim=200)
    with pytest.raises(ConfigError, match="prediction"):
        _run(prediction="epsilon")


@pytest.mark.parametrize("name,toyworld", [("toy_ar.safetensors", {}),
                                            ("toy_bidirectional.safetensors", {"model_dim": 256,
                                                                               "prediction": "velocity"})])
def test_shipped_weights_load_into_their_preset(name, toyworld):
    from longlive.assembly import build_model

    path = WEIGHTS / name
    assert path.stat().st_size <= 25 * 2**20  # the limit for weights in the repo
    run = _run(**toyworld)
    model = build_model(run, checkpoint=str(path))  # strict load: every key and shape must match
    assert model.config.dim == toyworld.get("model_dim", 320)


def test_weights_of_another_prediction_are_refused():
    from longlive.assembly import build_model

    with pytest.raises(ConfigError, match="trained with prediction='sample'.*prediction='velocity'"):
        build_model(_run(prediction="velocity"), checkpoint=str(WEIGHTS / "toy_ar.safetensors"))
