"""The NVFP4 experiment files run: t2v_nvfp4 with the debug preset, the toy W4A4 generation shortened."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import fouroversix  # noqa: F401  (required)
import pytest

from longlive.config import experiment_from_table, load_experiment
from longlive.errors import ConfigError
from longlive.run import make_run, run_task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXPERIMENTS = Path(__file__).parents[3] / "experiments"
DEBUG = ['model.preset="debug"', 'model.codec="wan2.2-vae-debug"', 'model.text_encoder="random"',
         "model.compile=false", 'run.device="cpu"', "sampler.height=64", "sampler.width=64", "sampler.num_frames=8",
         "sampler.frames_per_chunk=2", "sampler.window_frames=8", "plugins.attn_sink.sink_frames=2",
         "plugins.attn_sink.shot_sink_frames=2", "plugins.attn_sink.rope_shift_frames=2",
         f'generate.prompt_script="{EXPERIMENTS.parent / "prompts" / "debug_two_shots.toml"}"', "generate.fps=8.0"]


def test_t2v_nvfp4_runs_with_the_debug_preset_and_records_the_path(tmp_path):
    run = make_run(load_experiment(EXPERIMENTS / "t2v_nvfp4.toml", DEBUG), run_dir=tmp_path / "run")
    result = run_task(run)
    assert result["latent_frames"] == 8
    record = json.loads((tmp_path / "run" / "result.json").read_text())["quant"]["generator"]
    assert record["format"] == "fouroversix" and record["path"] == "emulate" and record["converted"] == 20
    assert "Blackwell" in record["why"]


def test_t2v_nvfp4_real_mode_is_one_clear_error_here():
    run = make_run(load_experiment(EXPERIMENTS / "t2v_nvfp4.toml", [*DEBUG, 'quant.mode="real"']),
                   create_dir=False)
    with pytest.raises(ConfigError, match=r"^quant.generator: format 'fouroversix' cannot run its real path on cpu: "):
        run.hook.longlive_check_compat(run=run)


def test_toy_w4a4_generation_runs_shortened(tmp_path):
    path = EXPERIMENTS / "toy" / "generate_w4a4.toml"
    table = tomllib.loads(path.read_text())
    table["sampler"].update(num_frames=8, steps=2)
    table["generate"] = {"prompt": "a small red circle moves right steadily and bounces on a dark blue background",
                         "fps": 8.0}
    run = make_run(experiment_from_table(table, source=path), run_dir=tmp_path / "run")
    result = run_task(run)
    assert result["frames"] == 8 and run.quant["generator"]["converted"] == 60  # 6 blocks x 10 linears
    assert result["toybench"]["overall"]["color"] > 0.5  # the W4A4 model still draws the red object
