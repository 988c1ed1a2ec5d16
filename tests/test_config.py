"""Experiment loading: strict schema, overrides, the broken-experiment corpus, TOML round trip."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from longlive.cli import main
from longlive.config import dumps_toml, experiment_from_table, experiment_to_table, load_experiment, tomllib
from longlive.errors import ConfigError

CORPUS = sorted((Path(__file__).parent / "broken_experiments").glob("*.toml"))


def _header(path: Path) -> tuple[str, list[str]]:
    expect, args = None, []
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            expect = line.removeprefix("# expect: ")
        elif line.startswith("# args: "):
            args = line.removeprefix("# args: ").split(" ")
    assert expect, f"{path.name} has no '# expect:' line"
    return expect, args


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_broken_experiment_gives_one_line_and_exit_2(path, capsys):
    expect, args = _header(path)
    code = main(["validate", str(path), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert expect in lines[0], f"expected {expect!r} in {lines[0]!r}"
    assert "Traceback" not in err


def test_typo_suggests_nearest_name(capsys):
    main(["validate", str(Path(__file__).parent / "broken_experiments" / "typo_key.toml")])
    assert 'did you mean "steps"' in capsys.readouterr().err


def test_cli_subprocess_prints_no_traceback():
    path = Path(__file__).parent / "broken_experiments" / "unknown_plugin.toml"
    out = subprocess.run([sys.executable, "-m", "longlive", "validate", str(path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "run.plugins" in out.stderr


def test_overrides_apply_before_validation(tmp_path):
    from debug_experiment import DEBUG_EXPERIMENT

    path = tmp_path / "x.toml"
    path.write_text(dumps_toml(DEBUG_EXPERIMENT))
    exp = load_experiment(path, ["sampler.steps=3", "run.name=renamed", 'generate.prompt="a blue square"'])
    assert exp.sampler.steps == 3 and exp.run.name == "renamed" and exp.generate.prompt == "a blue square"


def test_resolved_experiment_round_trips():
    from debug_experiment import DEBUG_EXPERIMENT

    exp = experiment_from_table(DEBUG_EXPERIMENT)
    table = experiment_to_table(exp, {})
    again = experiment_from_table(tomllib.loads(dumps_toml(table)))
    assert again.sampler == exp.sampler and again.model == exp.model and again.run == exp.run
    assert table["sampler"]["shift"] == 5.0  # defaults are written out


def test_strings_are_never_split_into_lists():
    from debug_experiment import DEBUG_EXPERIMENT

    table = {**DEBUG_EXPERIMENT, "run": {**DEBUG_EXPERIMENT["run"], "plugins": "head"}}
    with pytest.raises(ConfigError, match="run.plugins: expected a list"):
        experiment_from_table(table)
