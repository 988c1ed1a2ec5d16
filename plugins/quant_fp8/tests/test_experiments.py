"""experiments/t2v_fp8.toml runs with the debug preset (emulated on the CPU) and refuses mode "real" here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from longlive.config import load_experiment
from longlive.errors import ConfigError
from longlive.run import make_run, run_task

EXPERIMENTS = Path(__file__).parents[3] / "experiments"
DEBUG = ['model.preset="debug"', 'model.codec="wan2.2-vae-debug"', 'model.text_encoder="random"',
         "model.compile=false", 'run.device="cpu"', "sampler.height=64", "sampler.width=64", "sampler.num_frames=8",
         "sampler.frames_per_chunk=2", "sampler.window_frames=8", "plugins.attn_sink.sink_frames=2",
         "plugins.attn_sink.shot_sink_frames=2", "plugins.attn_sink.rope_shift_frames=2",
         f'generate.prompt_script="{EXPERIMENTS.parent / "prompts" / "debug_two_shots.toml"}"', "generate.fps=8.0"]


def test_t2v_fp8_runs_with_the_debug_preset_and_records_the_path(tmp_path):
    run = make_run(load_experiment(EXPERIMENTS / "t2v_fp8.toml", DEBUG), run_dir=tmp_path / "run")
    result = run_task(run)
    assert result["latent_frames"] == 8
    record = json.loads((tmp_path / "run" / "result.json").read_text())["quant"]["generator"]
    assert record["format"] == "fp8_rowwise" and record["path"] == "emulate" and record["converted"] == 20
    assert "compute capability >= 8.9" in record["why"]


def test_t2v_fp8_real_mode_is_one_clear_error_here():
    run = make_run(load_experiment(EXPERIMENTS / "t2v_fp8.toml", [*DEBUG, 'quant.mode="real"']), create_dir=False)
    with pytest.raises(ConfigError, match=r"^quant.generator: format 'fp8_rowwise' cannot run its real path on cpu: "):
        run.hook.longlive_check_compat(run=run)


def test_the_plugin_is_listed_with_its_key(capsys):
    from longlive.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "quant_fp8 0.1.0 (longlive, longlive_plugins.quant_fp8:QuantFP8)" in out and "fast_accum = False" in out
