"""The README's main job: the quickstart experiment with the shipped toy model (shortened for CI)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from longlive.cli import main
from longlive.media import read_video

QUICKSTART = Path(__file__).parents[1] / "experiments" / "quickstart.toml"


@pytest.mark.parametrize("plugins", ['["toyworld"]', '["toyworld", "kv_fp4"]'])
def test_quickstart_generates_and_scores_a_multi_shot_video(tmp_path, capsys, plugins):
    script = tmp_path / "two_shots.toml"
    script.write_text('[[shot]]\nprompt = "a small red circle moves right steadily and bounces on a dark blue background"\n'
                      'frames = 8\n\n[[shot]]\nprompt = "a small yellow square moves down steadily and bounces on a '
                      'black background"\nframes = 8\n')
    code = main(["run", str(QUICKSTART), "--run-dir", str(tmp_path / "run"), "--set", "sampler.num_frames=16",
                 "--set", f'generate.prompt_script="{script}"', "--set", f"run.plugins={plugins}"])
    out = capsys.readouterr().out
    assert code == 0 and "ToyBench" in out
    frames, fps = read_video(tmp_path / "run" / "video.mp4")
    assert frames.shape == (16, 64, 64, 3) and fps == 8.0
    scores = json.loads((tmp_path / "run" / "toybench.json").read_text())
    assert len(scores["switches"]) == 1 and 0.0 <= scores["overall"]["background"] <= 1.0
    assert (tmp_path / "run" / "toybench.png").stat().st_size > 0
