"""The RunContext handed to every hook, the run directory, and dispatching a task."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs
import pluggy
import torch

from longlive.components import ComponentRegistry
from longlive.config import Experiment, dumps_toml, experiment_to_table
from longlive.errors import ConfigError
from longlive.monitor import Monitor, log_run_hparams
from longlive.registry.manager import build_plugin_manager, installed_plugins

log = logging.getLogger(__name__)


@attrs.define(kw_only=True)
class RunContext:
    """Everything a task and a hook need about the current run."""

    experiment: Experiment
    pm: pluggy.PluginManager
    components: ComponentRegistry
    plugin_configs: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    run_dir: Path | None = None
    monitor: Monitor = attrs.field(factory=lambda: Monitor(None))
    task_config: Any = None  # the structured table of the task ([train] for train), if any

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def output_path(self, name: str) -> Path | None:
        """Path of an output file inside the run directory (None when the run has none)."""
        return self.run_dir / name if self.run_dir is not None else None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.hook.longlive_log(step=step, scalars=scalars, run=self)

    def generator(self, offset: int = 0, device: torch.device | str | None = None) -> torch.Generator:
        """A torch.Generator seeded from run.seed (+offset): every random draw goes through one."""
        g = torch.Generator(device=device or "cpu")
        g.manual_seed(self.experiment.run.seed + offset)
        return g


def resolve_device(name: str, *, check_available: bool = True) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"run.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if check_available and device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {name!r} asked for, but this machine has no CUDA GPU; use cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"run.device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def make_run(experiment: Experiment, *, run_dir: Path | None = None, create_dir: bool = True) -> RunContext:
    """Build the plugin manager and the context; create the run directory unless told not to."""
    pm, components, configs = build_plugin_manager(experiment)
    check_components(experiment, components)
    device = resolve_device(experiment.run.device, check_available=create_dir)  # validate checks config only
    run = RunContext(experiment=experiment, pm=pm, components=components, plugin_configs=configs,
                     device=device, dtype=resolve_dtype(experiment.run.dtype, device))
    if experiment.run.task == "train":  # structure [train] now, so validate catches its mistakes too
        from longlive.train.config import train_config

        run.task_config = train_config(run)
        run.task_config.check(experiment.sampler.frames_per_chunk)
    if create_dir:
        run.run_dir = run_dir or _new_run_dir(experiment)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        run.monitor = Monitor(run.run_dir / "tensorboard")
    return run


def check_components(experiment: Experiment, components: ComponentRegistry) -> None:
    """Every component the experiment names exists, and the geometry fits the codec and preset."""
    from longlive.geometry import Geometry

    components.get("task", experiment.run.task, where="run.task")
    preset = components.get("dit_preset", experiment.model.preset, where="model.preset").value
    codec = components.get("codec", experiment.model.codec, where="model.codec").value
    components.get("text_encoder", experiment.model.text_encoder, where="model.text_encoder")
    components.get("sampler", experiment.sampler.name, where="sampler.name")
    s = experiment.sampler
    Geometry(height=s.height, width=s.width, temporal_stride=codec.temporal_stride,
             spatial_stride=codec.spatial_stride, patch_h=preset.patch[1], patch_w=preset.patch[2],
             frames_per_chunk=s.frames_per_chunk)
    if codec.latent_channels != preset.in_channels:
        raise ConfigError(f"model.codec: {experiment.model.codec!r} makes {codec.latent_channels} latent channels but "
                          f"model.preset {experiment.model.preset!r} expects {preset.in_channels}")


def write_run_record(run: RunContext) -> None:
    """The resolved experiment (every default filled in), versions and git commit."""
    if run.run_dir is None:
        return
    table = experiment_to_table(run.experiment, run.plugin_configs, run.task_config)
    _write_atomic(run.run_dir / "experiment.toml", dumps_toml(table))
    versions = {
        "longlive": _version("longlive"),
        "torch": torch.__version__,
        "plugins": {n: installed_plugins()[n].version if n in installed_plugins() else "ad-hoc"
                    for n in run.experiment.run.plugins},
        "git_commit": _git_commit(),
        "device": str(run.device) + (f" ({torch.cuda.get_device_name(run.device)})" if run.device.type == "cuda" else ""),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_atomic(run.run_dir / "versions.json", json.dumps(versions, indent=2) + "\n")


def run_task(run: RunContext) -> dict:
    """Run `run.task` with the check-compat, run-end and logging protocol around it."""
    run.hook.longlive_check_compat(run=run)
    write_run_record(run)
    task = run.components.get("task", run.experiment.run.task, where="run.task").value
    result: dict = {}
    try:
        result = task(run) or {}
    finally:
        run.hook.longlive_run_end(run=run, result=result)
        run.monitor.close()
    if run.run_dir is not None:
        write_run_record(run)  # the task may have structured its own table meanwhile
        record = {k: v for k, v in result.items() if _is_plain(v)}
        log_run_hparams(run.monitor, experiment_to_table(run.experiment, run.plugin_configs, run.task_config), record)
        _write_atomic(run.run_dir / "result.json", json.dumps(record, indent=2) + "\n")
    return result


def _is_plain(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _new_run_dir(experiment: Experiment) -> Path:
    base = Path(experiment.run.output_dir)
    if not base.is_absolute() and experiment.source is not None and not base.exists():
        base = Path.cwd() / base
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = base / experiment.run.name / stamp
    suffix = 1
    while path.exists():
        path = base / experiment.run.name / f"{stamp}-{suffix}"
        suffix += 1
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
