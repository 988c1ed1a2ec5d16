"""The dmd plugin: listed with its keys, config errors name the key and the fix."""
from __future__ import annotations

import pytest

from longlive.config import experiment_from_table
from longlive.errors import ConfigError
from longlive.registry.manager import installed_plugins, load_plugin_class
from longlive.run import check_experiment
from longlive_plugins.dmd import DMD, DMDConfig


def _table(**dmd):
    return {"run": {"name": "t", "task": "train", "device": "cpu", "plugins": ["dmd"]},
            "model": {"preset": "debug", "codec": "wan2.2-vae-debug", "text_encoder": "random"},
            "sampler": {"height": 64, "width": 64, "num_frames": 4, "frames_per_chunk": 2, "window_frames": 4,
                        "steps": 2},
            "train": {"data": "unused/*.tar", "num_frames": 4},
            "plugins": {"dmd": dmd}}


def test_listed_with_its_defaults():
    assert load_plugin_class("dmd") is DMD and "dmd" in installed_plugins()
    config = DMDConfig()
    assert (config.real_guidance, config.generator_every, config.generator_lr, config.critic_lr) == (3.0, 5, 1e-5, 2e-6)
    assert (config.t_min, config.t_max) == (20.0, 980.0)


@pytest.mark.parametrize("dmd, task, message", [
    ({"t_min": 500.0, "t_max": 400.0}, "train", "plugins.dmd.t_min: 500.0 must be below t_max = 400.0"),
    ({"ema": ["teacher"]}, "train", r"plugins.dmd.ema: \['teacher'\] are not trained networks"),
    ({"loss_frames": 3}, "train", "plugins.dmd.loss_frames: 3 must be a multiple of sampler.frames_per_chunk = 2"),
    ({}, "generate", "plugins.dmd distils in training"),
])
def test_bad_settings_are_one_line_errors(dmd, task, message):
    table = _table(**dmd)
    table["run"]["task"] = task
    if task != "train":
        del table["train"]
        table["generate"] = {"prompt": "p"}
    with pytest.raises(ConfigError, match=message):
        check_experiment(experiment_from_table(table))


def test_a_valid_table_checks():
    assert check_experiment(experiment_from_table(_table(loss_frames=2, ema=["generator"])))


def test_sequence_parallel_distillation_is_refused_in_one_line():
    table = _table()
    table["parallel"] = {"sp": 2}
    with pytest.raises(ConfigError, match=r"plugins.dmd under parallel.sp = 2: .* set parallel.sp = 1"):
        check_experiment(experiment_from_table(table))
