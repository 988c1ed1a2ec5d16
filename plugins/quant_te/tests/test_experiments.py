"""The TE experiment files: t2v_nvfp4_te runs with the debug preset (emulated), real mode is refused here,
the toy ToyBench file validates, and `python -m longlive plugins` lists the plugin with its keys."""
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


def test_t2v_nvfp4_te_runs_with_the_debug_preset_and_records_the_path(tmp_path):
    run = make_run(load_experiment(EXPERIMENTS / "t2v_nvfp4_te.toml", DEBUG), run_dir=tmp_path / "run")
    result = run_task(run)
    assert result["latent_frames"] == 8
    record = json.loads((tmp_path / "run" / "result.json").read_text())["quant"]["generator"]
    assert record["format"] == "te_nvfp4" and record["path"] == "emulate" and record["converted"] == 20
    assert "compute capability >= 10.0" in record["why"] and record["packed_bytes"] == 0


def test_t2v_nvfp4_te_real_mode_is_one_clear_error_here():
    run = make_run(load_experiment(EXPERIMENTS / "t2v_nvfp4_te.toml", [*DEBUG, 'quant.mode="real"']),
                   create_dir=False)
    with pytest.raises(ConfigError, match=r"^quant.generator: format 'te_nvfp4' cannot run its real path on cpu: "):
        run.hook.longlive_check_compat(run=run)


def test_four_over_six_with_rht_is_refused_when_the_file_loads():
    with pytest.raises(ConfigError, match=r'^plugins.quant_te.nvfp4_4over6: "weights" needs disable_rht = true'):
        make_run(load_experiment(EXPERIMENTS / "t2v_nvfp4_te.toml", [*DEBUG, 'plugins.quant_te.nvfp4_4over6="weights"']),
                 create_dir=False)


def test_the_toy_eval_file_validates():
    experiment = load_experiment(EXPERIMENTS / "toy" / "eval_ar_te.toml")
    assert experiment.quant.generator == "te_nvfp4" and experiment.quant.mode == "emulate"
    make_run(experiment, create_dir=False)


def test_the_plugin_is_listed_with_its_keys(capsys):
    from longlive.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "quant_te 0.1.0 (longlive, longlive_plugins.quant_te:QuantTE)" in out
    for key in ("disable_rht = False", "disable_stochastic_rounding = False", "disable_2d_quantization = False",
                "nvfp4_4over6 = 'none'", "nvfp4_4over6_e4m3_use_256 = 'all'", "nvfp4_4over6_err_mode = 'MAE'"):
        assert key in out
