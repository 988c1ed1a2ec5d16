"""benchmarks/toy_ablation.py end to end on short videos with random weights (a smoke test of the report)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = """[[shot]]
prompt = "a small red circle moves right steadily and bounces on a dark blue background"
frames = 16

[[shot.switches]]
at_frame = 8
prompt = "a small yellow square moves right steadily and bounces on a dark blue background"

[[shot]]
prompt = "a small green triangle moves down steadily and bounces on a black background"
frames = 8
"""


def test_ablation_script_writes_table_and_plot(tmp_path):
    spec = importlib.util.spec_from_file_location("toy_ablation", ROOT / "benchmarks" / "toy_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    script = tmp_path / "script.toml"
    script.write_text(SCRIPT)
    small = ["--set", "sampler.num_frames=24", "--set", f'generate.prompt_script="{script}"', "--set",
             "sampler.steps=1", "--set", "sampler.height=32", "--set", "sampler.width=32",
             "--set", "plugins.toyworld.size=32", "--set", "plugins.toyworld.segment_s=1.0"]
    assert module.main(["--only", "window", "sink_recache", *small, "--runs-dir", str(tmp_path / "runs"),
                        "--docs", str(tmp_path / "docs")]) == 0
    md = (tmp_path / "docs" / "ablations.md").read_text()
    assert "| segment | window | sink_recache |" in md and "| 0-1 s |" in md and "| 2-3 s |" in md
    assert "| 1.0 s | switch |" in md and "| 2.0 s | cut |" in md and "random weights" in md
    assert (tmp_path / "docs" / "ablations.png").stat().st_size > 10_000
    assert (tmp_path / "runs" / "sink_recache" / "toybench.json").is_file()
