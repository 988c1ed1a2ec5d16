"""The [plugins.attn_sink] table: budgets checked against [sampler] before anything is built."""
from __future__ import annotations

import pytest

from longlive.config import experiment_from_table
from longlive.errors import ConfigError
from longlive.run import make_run


def _experiment(**sink) -> dict:
    return {
        "run": {"name": "t", "device": "cpu", "plugins": ["attn_sink"]},
        "model": {"preset": "debug", "codec": "wan2.2-vae-debug", "text_encoder": "random"},
        "sampler": {"height": 64, "width": 64, "num_frames": 16, "frames_per_chunk": 4, "window_frames": 16},
        "generate": {"prompt": "x"},
        "plugins": {"attn_sink": sink},
    }


def _validate(**sink):
    return make_run(experiment_from_table(_experiment(**sink)), create_dir=False)


def test_valid_budget_and_recorded_defaults():
    run = _validate(sink_frames=4, shot_sink_frames=4)
    config = run.plugin_configs["attn_sink"]
    assert (config.sink_frames, config.shot_sink_frames, config.rope_shift_frames) == (4, 4, 8)
    _validate(sink_frames=12, shot_sink_frames=0)  # sink + one chunk = the whole window: allowed


@pytest.mark.parametrize("sink, message", [
    (dict(sink_frames=6, shot_sink_frames=4), r"plugins\.attn_sink\.sink_frames: 6 is not a multiple of "
                                              r"sampler\.frames_per_chunk = 4.*try 8"),
    (dict(sink_frames=4, shot_sink_frames=2), r"plugins\.attn_sink\.shot_sink_frames: 2 is not a multiple"),
    (dict(sink_frames=8, shot_sink_frames=8), r"plugins\.attn_sink\.shot_sink_frames: sink_frames 8 \+ "
                                              r"shot_sink_frames 8 \+ the chunk being generated \(4\) = 20 exceed "
                                              r"sampler\.window_frames = 16"),
    (dict(sink_frames=16, shot_sink_frames=0), r"plugins\.attn_sink\.sink_frames: .* = 20 exceed"),
    (dict(sink_frames=-4), r"plugins\.attn_sink\.sink_frames: -4 is out of range"),
    (dict(recache_sink=True), r"plugins\.attn_sink\.recache_sink: true has no effect"),
    (dict(prompt_file="p.txt", prompt_stdin=True), r"plugins\.attn_sink\.prompt_stdin: .* choose one"),
    (dict(sink_frame=4), r"plugins\.attn_sink\.sink_frame: unknown key.*sink_frames"),
    (dict(relative_rope="yes"), r"plugins\.attn_sink\.relative_rope"),
])
def test_config_errors_name_the_key(sink, message):
    with pytest.raises(ConfigError, match=message):
        _validate(**sink)


def test_window_override_is_checked_too():
    table = _experiment(sink_frames=4, shot_sink_frames=4)
    table["sampler"]["window_frames"] = 8
    with pytest.raises(ConfigError, match=r"plugins\.attn_sink\.shot_sink_frames: .*window_frames = 8"):
        make_run(experiment_from_table(table), create_dir=False)
