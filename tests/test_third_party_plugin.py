"""The example third-party plugin (examples/longlive-latent-stats), installed by the test command."""
from __future__ import annotations

import json
from pathlib import Path

from longlive.cli import main
from longlive.registry.manager import installed_plugins

EXPERIMENT = Path(__file__).parents[1] / "experiments" / "debug_generate.toml"


def test_example_plugin_is_installed_and_listed(capsys):
    assert "latent_stats" in installed_plugins()
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "latent_stats 0.1.0 (longlive-latent-stats" in out and "longlive_chunk_done" in out
    assert "toyworld" in out


def test_core_calls_the_plugin_and_its_table_is_validated(tmp_path, capsys):
    args = ["run", str(EXPERIMENT), "--run-dir", str(tmp_path), "--set", 'run.plugins=["latent_stats"]',
            "--set", 'plugins.latent_stats.output="stats.json"', "--set", "plugins.latent_stats.every=2"]
    assert main(args) == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert [s["chunk"] for s in stats] == [0, 2]  # 4 chunks, every second one
    assert all(s["std"] > 0 for s in stats)
    assert 'every = 2' in (tmp_path / "experiment.toml").read_text()
    capsys.readouterr()
    assert main([*args[:-2], "--set", "plugins.latent_stats.evry=2", "--run-dir", str(tmp_path / "x")]) == 2
    assert "plugins.latent_stats.evry" in capsys.readouterr().err
