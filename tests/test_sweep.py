"""`longlive sweep`: the sweep file schema, planning, resuming after a failure or an interrupt, the tables and hparams."""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longlive.cli import main
from longlive.errors import ConfigError
from longlive.monitor import Monitor
from longlive.sweep import run_sweep
from longlive.sweep_plan import load_sweep

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.toml"
WEIGHTS = ROOT / "plugins" / "toyworld" / "weights" / "toy_ar.safetensors"
SWEEPS = sorted((ROOT / "experiments" / "sweeps").glob("*.toml"))
SCRIPT = ('[[shot]]\nprompt = "a small red circle moves right steadily and bounces on a dark blue background"\n'
          'frames = 8\n')


def tiny_sweep(tmp_path: Path, body: str, *, seeds: str = "[0, 1]") -> Path:
    """A sweep of the quickstart experiment shrunk to 8 frames of 32x32, one sampler step (a few s per run)."""
    (tmp_path / "script.toml").write_text(SCRIPT)
    path = tmp_path / "tiny.toml"
    path.write_text(f"""[sweep]
name = "tiny"
base = "{QUICKSTART}"
seeds = {seeds}
set = ['generate.prompt_script="{tmp_path / 'script.toml'}"', "sampler.num_frames=8", "sampler.steps=1",
       "sampler.height=32", "sampler.width=32", "plugins.toyworld.size=32", "plugins.toyworld.segment_s=1.0"]
metrics = ["toybench.overall.background", "frames", "seconds"]
report = "report.md"
{body}""")
    return path


def event_tags(folder: Path) -> dict[str, str]:
    """Summary tag -> TensorBoard plugin name, over the event files under `folder`."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags = {}
    for path in folder.rglob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            tags.update((v.tag, v.metadata.plugin_data.plugin_name) for v in event.summary.value)
    return tags


def hparams_event_plugins(folder: Path) -> set[str]:
    """Names of the TensorBoard plugins with summaries in the event files under `folder`."""
    return set(event_tags(folder).values())


def stand_in_run_outputs(sweep: Path, root: Path) -> None:
    """A sweep over fine-tunes names their exports under runs/ (its `set` paths are relative to the
    working directory, and a clean clone has no runs/): put the shipped toy weights there, so the
    dry run validates everything else of every variant."""
    from longlive.config import tomllib  # tomllib, or tomli before Python 3.11

    for variant in tomllib.loads(sweep.read_text()).get("variants", []):
        for override in variant.get("set", []):
            value = override.split("=", 1)[1].strip('"')
            if value.startswith("runs/"):
                (root / value).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(WEIGHTS, root / value)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweep_dry_run_validates_every_variant(path, tmp_path, capsys, monkeypatch):
    stand_in_run_outputs(path, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(path), "--dry-run", "--sweep-dir", str(tmp_path / "sweep")]) == 0
    out = capsys.readouterr().out
    assert "all valid" in out and "pending" in out
    assert not (tmp_path / "sweep").exists()  # a dry run writes nothing


def test_there_are_shipped_sweeps():
    assert {p.stem for p in SWEEPS} >= {"attn_sink_toy", "sampler_steps_toy"}


def test_product_of_axes_and_seeds(tmp_path):
    path = tiny_sweep(tmp_path, """
[[axes]]
name = "steps"
key = "sampler.steps"
values = [1, 2]

[[axes]]
name = "sink"
[[axes.levels]]
name = "off"
[[axes.levels]]
name = "on"
add_plugins = ["attn_sink"]
set = ["plugins.attn_sink.sink_frames=4", "plugins.attn_sink.shot_sink_frames=0"]
""")
    sweep = load_sweep(path, ["sampler.shift=3.0"], tmp_path / "out")
    assert [r.label for r in sweep.runs] == ["steps=1+off/seed0", "steps=1+off/seed1", "steps=1+on/seed0",
                                             "steps=1+on/seed1", "steps=2+off/seed0", "steps=2+off/seed1",
                                             "steps=2+on/seed0", "steps=2+on/seed1"]
    last = sweep.runs[-1]
    assert last.levels == (("steps", "steps=2"), ("sink", "on"))
    assert last.run_dir == tmp_path / "out" / "steps=2+on" / "seed1"
    assert last.overrides[-6:] == ("sampler.shift=3.0", "sampler.steps=2", "plugins.attn_sink.sink_frames=4",
                                   "plugins.attn_sink.shot_sink_frames=0", 'run.plugins=["toyworld", "attn_sink"]',
                                   "run.seed=1")
    assert sweep.axes == ("steps", "sink")


@pytest.mark.parametrize("body, message", [
    ("\n[[variant]]\nname = \"a\"\n", 'variant: unknown table (did you mean "variants"?)'),
    ("\n[[variants]]\nname = \"a\"\nadd_plugin = [\"attn_sink\"]\n",
     'variants[0].add_plugin: unknown key (did you mean "add_plugins"?)'),
    ("\n[[variants]]\nname = \"a\"\nset = \"sampler.steps=2\"\n", "variants[0].set: expected a list of str"),
    ("\n[[variants]]\nname = \"a\"\n[[variants]]\nname = \"a\"\n", "variants: name 'a' is used twice"),
    ("\n[[variants]]\nname = \"a b\"\n", "variants: name 'a b' is not a folder name"),
    ("\n[[variants]]\nname = \"a\"\n[[axes]]\nname = \"b\"\nkey = \"sampler.steps\"\nvalues = [1]\n",
     "give either [[axes]]"),
    ("\n[[axes]]\nname = \"b\"\nkey = \"sampler.steps\"\n", "needs values = [...]"),
    ("\n[[variants]]\nname = \"a\"\nset = [\"run.seed=3\"]\n", "the seeds come from sweep.seeds"),
    ("\n[[variants]]\nname = \"a\"\nset = [\"run.plugins=[]\"]\n", "add_plugins / remove_plugins"),
    ("\n[[variants]]\nname = \"a\"\nremove_plugins = [\"toyworld\"]\n", "which --set cannot remove"),
    ("\n[[variants]]\nname = \"a\"\nremove_plugins = [\"attn_sink\"]\n", "is not in the base's run.plugins"),
    ("\n[[variants]]\nname = \"a\"\nadd_plugins = [\"toyworld\"]\n", "'toyworld' is already enabled"),
    ("\n[[variants]]\nname = \"ok\"\n[[variants]]\nname = \"bad\"\nset = [\"sampler.stepz=2\"]\n",
     'sweep variant bad/seed0: sampler.stepz: unknown key (did you mean "steps"?)'),
])
def test_bad_sweep_files_are_one_line_errors_before_anything_runs(tmp_path, capsys, body, message):
    path = tiny_sweep(tmp_path, body)
    assert main(["sweep", str(path), "--sweep-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_sweep_table_unknown_key_names_nearest(tmp_path):
    path = tiny_sweep(tmp_path, "\n[[variants]]\nname = \"a\"\n")
    path.write_text(path.read_text().replace("seeds =", "seed ="))
    with pytest.raises(ConfigError, match=r'sweep.seed: unknown key \(did you mean "seeds"\?\)'):
        load_sweep(path)


def test_table_of_finished_runs_mean_and_spread(tmp_path):
    """Runs already finished (result.json present, same definition) are not run again, only tabulated."""
    path = tiny_sweep(tmp_path, "\n[[variants]]\nname = \"a\"\nnote = \"the base\"\n[[variants]]\nname = \"b\"\n"
                                "set = [\"sampler.steps=2\"]\n", seeds="[0, 1, 2]")
    sweep = load_sweep(path, [], tmp_path / "out")
    values = {"a": [0.5, 0.7, 0.6], "b": [1.0, 1.0, 1.0]}
    for planned in sweep.runs:
        planned.run_dir.mkdir(parents=True)
        how = {"jobs": 2, "shared_machine": True}  # how the run ran: not part of its definition
        (planned.run_dir / "sweep_variant.json").write_text(json.dumps({**planned.record(sweep.base), **how}))
        value = values[planned.variant][planned.seed]
        (planned.run_dir / "result.json").write_text(json.dumps(
            {"frames": 8, "seconds": 10.0 + planned.seed, "toybench": {"overall": {"background": value}}}))
    code, text = run_sweep(path, overrides=[], sweep_dir=tmp_path / "out", jobs=1, dry_run=False,
                           shared_machine=True, command="python -m longlive sweep tiny.toml")
    assert code == 0
    assert "| variant | seeds | toybench.overall.background | frames | seconds † |" in text
    assert "| a | 3/3 | 0.600 ± 0.100 | 8.000 ± 0.000 | 11.0 ± 1.0 |" in text
    assert "| b | 3/3 | 1.000 ± 0.000 |" in text and "shared machine" in text and "ran 2 runs at a time" in text
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert rows[0]["variant"] == "a" and float(rows[0]["toybench.overall.background"]) == pytest.approx(0.6)
    assert float(rows[0]["toybench.overall.background_std"]) == pytest.approx(0.1)
    assert len(list(csv.DictReader((tmp_path / "out" / "runs.csv").open()))) == 6
    report = (tmp_path / "report.md").read_text()
    assert "Generated by `python -m longlive sweep tiny.toml`" in report and "| a | none: the base | the base |" in report
    assert "hparams" in hparams_event_plugins(tmp_path / "out" / "tensorboard" / "b" / "seed2")
    # a finished run of another definition is never reused silently
    with pytest.raises(ConfigError, match="holds a finished run of another definition"):
        run_sweep(path, overrides=["sampler.shift=3.0"], sweep_dir=tmp_path / "out", jobs=1, dry_run=False,
                  shared_machine=True, command="")


def test_monitor_hparams_writes_an_hparams_session(tmp_path):
    monitor = Monitor(tmp_path / "tb")
    monitor.hparams({"sampler.steps": 4, "run.plugins": ("toyworld", "attn_sink"), "flag": True}, {"fps": 2.5})
    monitor.close()
    tags = event_tags(tmp_path / "tb")
    assert tags["_hparams_/session_start_info"] == "hparams" and tags["_hparams_/session_end_info"] == "hparams"
    assert tags["result/fps"] == "scalars" and "_hparams_/experiment" not in tags  # TensorBoard unions sessions


def test_tiny_sweep_fails_once_resumes_and_gets_the_full_table(tmp_path, capsys):
    """4 runs (2 variants x 2 seeds); one variant's checkpoint is broken at first: its runs fail, the rest go
    on; after the fix the sweep resumes, runs only those, and the table is full."""
    flaky = tmp_path / "flaky.safetensors"
    flaky.write_bytes(b"not a checkpoint")
    path = tiny_sweep(tmp_path, f"""
[[variants]]
name = "shipped"

[[variants]]
name = "flaky"
set = ['model.checkpoint="{flaky}"']
""")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--sweep-dir", str(out), "--jobs", "2"]) == 1
    printed = capsys.readouterr().out
    assert "| shipped | 2/2 |" in printed and "| flaky | 0/2 (2 failed) |" in printed
    assert "2 of 4 runs failed: flaky/seed0, flaky/seed1" in printed
    failure = json.loads((out / "flaky" / "seed0" / "sweep_failure.json").read_text())
    assert failure["returncode"] == 2 and "not a readable safetensors file" in failure["output_tail"][-1]
    assert not (tmp_path / "report.md").exists()  # the report waits for every run
    finished = {s: (out / "shipped" / f"seed{s}" / "result.json").stat().st_mtime_ns for s in (0, 1)}

    shutil.copy(WEIGHTS, flaky)
    assert main(["sweep", str(path), "--sweep-dir", str(out), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| shipped | 2/2 |" in printed and "| flaky | 2/2 |" in printed and "all 4 runs finished" in printed
    assert {s: (out / "shipped" / f"seed{s}" / "result.json").stat().st_mtime_ns for s in (0, 1)} == finished
    assert not (out / "flaky" / "seed0" / "sweep_failure.json").exists()
    for variant in ("shipped", "flaky"):
        for seed in (0, 1):
            assert "hparams" in hparams_event_plugins(out / "tensorboard" / variant / f"seed{seed}")
            assert "hparams" in hparams_event_plugins(out / variant / f"seed{seed}" / "tensorboard")  # the run's own
    assert "| flaky | `model.checkpoint=" in (tmp_path / "report.md").read_text()
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert [r["status"] for r in runs] == ["finished"] * 4 and all(r["frames"] == "8.0" for r in runs)


def test_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    """`kill` (SIGTERM; Ctrl-C takes the same path) while the second run is going: the sweep stops it and
    tabulates what finished; the next call runs only the unfinished run."""
    path = tiny_sweep(tmp_path, "\n[[variants]]\nname = \"only\"\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "longlive", "sweep", str(path), "--sweep-dir", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "only" / "seed0" / "result.json"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.exists(), proc.communicate()
    second = out / "only" / "seed1" / "sweep_output.txt"
    while not (second.exists() and second.stat().st_size > 0):  # the second run's process has started
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "stopped only/seed1" in err
    assert not (out / "only" / "seed1" / "result.json").exists()
    assert "| only | 1/2 |" in (out / "results.md").read_text()  # the table of what had finished
    mtime = first.stat().st_mtime_ns
    assert main(["sweep", str(path), "--sweep-dir", str(out)]) == 0
    assert first.stat().st_mtime_ns == mtime and (out / "only" / "seed1" / "result.json").is_file()
    assert "| only | 2/2 |" in (out / "results.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--set", "sampler.stepz=2"], 'sweep.base '),
    (["--jobs", "0"], "--jobs: 0 is not a number of parallel runs"),
    (["--jobs", "2", "--dedicated"], "use --jobs 1 with --dedicated"),
])
def test_bad_command_line_is_a_one_line_error(tmp_path, capsys, args, message):
    path = tiny_sweep(tmp_path, "\n[[variants]]\nname = \"a\"\n")
    assert main(["sweep", str(path), "--sweep-dir", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_running_a_sweep_file_as_an_experiment_says_what_it_is(capsys):
    assert main(["run", str(SWEEPS[0])]) == 2
    assert "this is a sweep file, not an experiment; run it with python -m longlive sweep" in capsys.readouterr().err
