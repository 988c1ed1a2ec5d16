"""The toy_eval task: held-out prompt scripts cut on chunk boundaries, scored end to end."""
from __future__ import annotations

import json

from longlive.config import experiment_from_table
from longlive.run import make_run, run_task
from longlive_plugins.toyworld.heldout import heldout_script
from longlive_plugins.toyworld.shards import clip_seed
from longlive_plugins.toyworld.world import parse_caption


def test_heldout_scripts_align_with_chunks_and_differ_from_training_seeds():
    for i in range(5):
        script = heldout_script(clip_seed(0, "heldout", i), latent_frames=40, frames_per_chunk=4, stride=1, shots=2,
                                size=64, fps=8.0)
        assert script.total_frames == 40 and len(script.shot) == 2
        assert all(s.frames % 4 == 0 for s in script.shot)
        for shot in script.shot:
            parse_caption(shot.prompt)  # every prompt is a valid caption
    assert clip_seed(0, "heldout", 0) % 2 == 1 and clip_seed(0, "train", 0) % 2 == 0


def test_toy_eval_task_scores_every_clip(tmp_path):
    table = {
        "run": {"name": "eval", "task": "toy_eval", "device": "cpu", "plugins": ["toyworld"]},
        "model": {"preset": "toy", "codec": "toy-patch", "text_encoder": "toy-words"},
        "sampler": {"steps": 1, "height": 32, "width": 32, "num_frames": 8, "frames_per_chunk": 4,
                    "window_frames": 8},
        "plugins": {"toyworld": {"size": 32, "eval_clips": 2, "eval_shots": 2}},
    }
    result = run_task(make_run(experiment_from_table(table), run_dir=tmp_path))
    saved = json.loads((tmp_path / "toy_eval.json").read_text())
    assert saved["clips"] == 2 and len(saved["per_clip"]) == 2
    assert set(result["mean"]) == {"color", "shape", "motion", "persistence", "background"}
