"""Item 6: `validate` rejects what `run` cannot do: every numeric field has a finite range, NaN
and inf are rejected everywhere, nesting depth is limited (no traceback from validate itself),
and the prompt script and image are opened and checked. Each case: exit 2, one line naming the key."""
from __future__ import annotations

import math
import typing

import attrs
import pytest

from fault_helpers import BASE, BENCH, TRAIN, cli, write_experiment
from longlive.config import BenchConfig, GenerateConfig, ModelConfig, RunConfig, SamplerConfig
from longlive.errors import ConfigError
from longlive.prompts import Shot, Switch
from longlive.registry.manager import installed_plugins, load_plugin_class
from longlive.structure import structure
from longlive.train.config import TrainConfig

def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("table, override, key", [
    (BASE, "sampler.num_frames=1000000000000", "sampler.num_frames"),
    (BASE, "sampler.height=1000000000000", "sampler.height"),
    (BASE, "sampler.window_frames=1000000000000", "sampler.window_frames"),
    (BASE, "run.seed=9223372036854775807", "run.seed"),
    (BASE, "sampler.shift=inf", "sampler.shift"),
    (BASE, "sampler.guidance=nan", "sampler.guidance"),
    (TRAIN, "train.weight_decay=nan", "train.weight_decay"),
    (TRAIN, "train.grad_clip=nan", "train.grad_clip"),
    (TRAIN, "train.grad_accum=1000000000000", "train.grad_accum"),
    (TRAIN, "train.max_seconds=-inf", "train.max_seconds"),
    (BENCH, "bench.warmup_chunks=1000000000000", "bench.warmup_chunks"),
    (BASE, "plugins.toyworld.train_clips=1000000000000", "plugins.toyworld.train_clips"),
    (BASE, "plugins.attn_sink.sink_frames=1000000000000", "plugins.attn_sink.sink_frames"),
])
def test_validate_rejects_out_of_range_and_nonfinite_numbers(table, override, key, tmp_path, capsys):
    (tmp_path / "shards").mkdir()
    exp = write_experiment(tmp_path, table)
    assert cli("validate", exp) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert cli("validate", exp, "--set", override) == 2
    assert key in _one_error_line(capsys)


def _config_classes() -> list[type]:
    plugins = [load_plugin_class(name).Config for name in installed_plugins()]  # in-tree ones (third-party: theirs)
    plugins = [c for c in plugins if c.__module__.startswith(("longlive.", "longlive_plugins."))]
    return [RunConfig, ModelConfig, SamplerConfig, GenerateConfig, BenchConfig, TrainConfig, Shot, Switch, *plugins]


def _numeric_fields(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    numeric = {int, float, int | None, float | None}
    return [f.name for f in attrs.fields(cls) if hints[f.name] in numeric]


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_numeric_field_has_a_finite_range(cls):
    """10**12 (a typo's size) and NaN are refused by every numeric field of every config class."""
    for name in _numeric_fields(cls):
        hint = typing.get_type_hints(cls)[name]
        for bad in (10**12, -10**12) + ((math.nan, math.inf) if float in typing.get_args(hint) + (hint,) else ()):
            table = {"name": "x", "data": "x", "prompt": "p", "frames": 2, "at_frame": 2} | {name: bad}
            table = {k: v for k, v in table.items() if k in attrs.fields_dict(cls)}
            with pytest.raises(ConfigError, match=name):
                structure(table, cls, where="t")


def test_deeply_nested_value_is_one_line(tmp_path, capsys):
    exp = write_experiment(tmp_path, BASE)
    deep = exp.read_text() + "\n[plugins.toyworld.extra]\nx = " + "[" * 50_000 + "]" * 50_000 + "\n"
    exp.write_text(deep)
    assert cli("validate", exp) == 2
    assert "nested too deeply" in _one_error_line(capsys)
    deep = "run.plugins=" + "[" * 40 + "]" * 40
    assert cli("validate", write_experiment(tmp_path, BASE, "ok.toml"), "--set", deep) == 2
    assert "nested too deeply" in _one_error_line(capsys)


@pytest.mark.parametrize("case, expect", [
    ("non-UTF-8 script", "not a UTF-8 text file"),
    ("script is a directory", "is not a regular file"),
    ("two switches at one frame", "two switches at_frame = 2"),
    ("shots do not cover the video", "shots cover 2 latent frames"),
    ("unreadable image", "generate.image"),
])
def test_validate_opens_the_prompt_script_and_image(case, expect, tmp_path, capsys):
    script = tmp_path / "script.toml"
    good = '[[shot]]\nprompt = "a red circle moves left on a black background"\nframes = 4\n'
    table = {**BASE, "generate": {"prompt_script": "script.toml"}}
    if case == "non-UTF-8 script":
        script.write_bytes(good.encode() + b"# \xff\xfe\n")
    elif case == "script is a directory":
        script.mkdir()
    elif case == "two switches at one frame":
        b = "a red circle moves up on a black background"
        script.write_text(good + f'switches = [{{at_frame = 2, prompt = "{b}"}}, {{at_frame = 2, prompt = "{b}"}}]\n')
    elif case == "shots do not cover the video":
        script.write_text(good.replace("frames = 4", "frames = 2"))
    else:
        (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        table = {**BASE, "generate": {**BASE["generate"], "image": "image.png"}}
    assert cli("validate", write_experiment(tmp_path, table)) == 2
    assert expect in _one_error_line(capsys)


def test_a_cache_no_device_can_hold_is_refused(tmp_path, capsys):
    """The estimated KV cache is checked against the device (here: host RAM) before any allocation."""
    sampler = {**BASE["sampler"], "height": 8192, "width": 8192, "window_frames": 65536}
    table = {**BASE, "sampler": sampler, "plugins": {**BASE["plugins"], "toyworld": {"size": 32, "score": False}}}
    assert cli("validate", write_experiment(tmp_path, table)) == 2
    line = _one_error_line(capsys)
    assert "sampler.window_frames" in line and "GiB" in line and "cpu has" in line
