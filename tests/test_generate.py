"""End-to-end generation on the CPU: T2V and I2V with a 2-shot prompt script, playable mp4s."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longlive.cli import main
from longlive.media import read_video

EXPERIMENTS = Path(__file__).parents[1] / "experiments"


@pytest.mark.parametrize("name, latent_frames", [("debug_generate", 8), ("debug_i2v", 4)])
def test_generate_writes_a_playable_mp4(tmp_path, name, latent_frames):
    assert main(["run", str(EXPERIMENTS / f"{name}.toml"), "--run-dir", str(tmp_path)]) == 0
    frames, fps = read_video(tmp_path / "video.mp4")
    assert frames.shape == (1 + 4 * (latent_frames - 1), 64, 64, 3)  # the Wan VAE's causal frame count
    assert fps == pytest.approx(8.0)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["frames"] == frames.shape[0] and result["latent_frames"] == latent_frames
    assert (tmp_path / "experiment.toml").is_file() and list((tmp_path / "tensorboard").iterdir())


def test_generation_is_reproducible_with_a_seed(tmp_path):
    args = ["run", str(EXPERIMENTS / "debug_generate.toml"), "--set", "generate.save_latents=true", "--run-dir"]
    assert main([*args, str(tmp_path / "a")]) == 0 and main([*args, str(tmp_path / "b")]) == 0
    from longlive.latent_sink import read_latents

    a, b = (read_latents(tmp_path / r / "latents") for r in "ab")
    assert torch.isfinite(a).all() and torch.equal(a, b) and a.shape[2] == 8
    assert main([*args, str(tmp_path / "c"), "--set", "run.seed=1"]) == 0
    assert not torch.equal(a, read_latents(tmp_path / "c" / "latents"))


def test_i2v_first_frame_is_the_image(tmp_path):
    """The image is encoded to latent frame 0 and kept there (t = 0) through every step."""
    from longlive.config import load_experiment
    from longlive.run import make_run, run_task

    exp = load_experiment(EXPERIMENTS / "debug_i2v.toml", ["generate.save_latents=true"])
    run = make_run(exp, run_dir=tmp_path)
    result = run_task(run)
    from longlive.core_components import build_debug_vae
    from longlive.latent_sink import read_latents
    from longlive.media import read_image

    latents = read_latents(tmp_path / "latents")
    image = read_image(exp.generate.image, height=64, width=64)
    expected = build_debug_vae(run).encode(image[None, :, None])
    torch.testing.assert_close(latents[:, :, :1], expected, atol=1e-5, rtol=1e-5)
    assert result["latent_frames"] == 4


def test_bad_inputs_fail_before_weights_load(tmp_path, capsys):
    bad_script = tmp_path / "script.toml"
    bad_script.write_text('[[shot]]\nprompt = "x"\nframes = 3\n')
    code = main(["run", str(EXPERIMENTS / "debug_generate.toml"), "--run-dir", str(tmp_path / "r"),
                 "--set", f'generate.prompt_script="{bad_script}"'])
    err = capsys.readouterr().err
    assert code == 2 and "shots cover 3 latent frames" in err
    wrong_image = tmp_path / "img.png"
    import shutil

    shutil.copy(EXPERIMENTS.parent / "prompts" / "first_frame_64.png", wrong_image)
    code = main(["run", str(EXPERIMENTS / "debug_i2v.toml"), "--run-dir", str(tmp_path / "s"),
                 "--set", f'generate.image="{wrong_image}"', "--set", "sampler.width=128"])
    assert code == 2 and "generate.image" in capsys.readouterr().err
