"""The RunContext handed to every hook and task, checking an experiment, and dispatching a task.

Two steps, so `validate` stays fast: `check_experiment` builds the plugin manager, the
components and every config (no torch, no weights: what `validate` runs); `make_run` then
resolves the device, sets torch's threads and creates the run directory.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from longlive.components import CodecSpec, ComponentRegistry
from longlive.config import Experiment, dumps_toml, experiment_to_table
from longlive.errors import ConfigError
from longlive.geometry import Geometry
from longlive.layout import SequenceLayout, SingleDeviceLayout, check_split
from longlive.monitor import Monitor, log_run_hparams
from longlive.parallel import ParallelMesh
from longlive.registry.manager import build_plugin_manager, installed_plugins

if TYPE_CHECKING:
    import torch

    from longlive.model.presets import DiTConfig

log = logging.getLogger(__name__)


@attrs.define(kw_only=True)
class CheckedExperiment:
    """An experiment with its plugins, components and configs built and cross-checked."""

    experiment: Experiment
    pm: pluggy.PluginManager
    components: ComponentRegistry
    plugin_configs: dict[str, Any]
    task_config: Any = None  # the structured table of the task ([train] for train), if any


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
    allow_changed_resume: bool = False  # --allow-changed-resume: resume under an experiment that breaks exactness
    quant: dict[str, dict] = attrs.field(factory=dict)  # per role: format, path that ran, modules converted
    mesh: ParallelMesh = attrs.field(factory=ParallelMesh)  # this process's place in the (dp, sp) launch
    layout: SequenceLayout = attrs.field(factory=SingleDeviceLayout)  # how cached forwards split a chunk

    @property
    def hook(self) -> Any:
        """The plugin manager's hook relay: `run.hook.longlive_<name>(...)`."""
        return self.pm.hook

    @property
    def preset(self) -> DiTConfig:
        """The DiT preset named by model.preset."""
        return self.components.get("dit_preset", self.experiment.model.preset, where="model.preset").value

    @property
    def codec_spec(self) -> CodecSpec:
        """The codec component named by model.codec (geometry facts and its factory)."""
        return self.components.get("codec", self.experiment.model.codec, where="model.codec").value

    @property
    def geometry(self) -> Geometry:
        """Pixel/latent/token geometry of the experiment's video under its codec and preset."""
        return experiment_geometry(self.experiment, self.codec_spec, self.preset)

    def output_path(self, name: str) -> Path | None:
        """Path of an output file inside the run directory (None when the run has none)."""
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"output_path: {name!r} is not a file name inside the run directory")
        return self.run_dir / name if self.run_dir is not None else None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.hook.longlive_log(step=step, scalars=scalars, run=self)


def experiment_geometry(experiment: Experiment, codec: CodecSpec, preset: DiTConfig) -> Geometry:
    s = experiment.sampler
    return Geometry(height=s.height, width=s.width, temporal_stride=codec.temporal_stride,
                    spatial_stride=codec.spatial_stride, patch_h=preset.patch[1], patch_w=preset.patch[2],
                    frames_per_chunk=s.frames_per_chunk)


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_experiment(experiment: Experiment) -> CheckedExperiment:
    """Build the plugin manager and every config and check them together; imports no torch."""
    pm, components, configs = build_plugin_manager(experiment)
    check_components(experiment, components)
    if not _DEVICE.match(experiment.run.device):
        raise ConfigError(f"run.device: {experiment.run.device!r} is not supported; use auto, cpu, cuda or cuda:N")
    checked = CheckedExperiment(experiment=experiment, pm=pm, components=components, plugin_configs=configs)
    if experiment.run.task == "train":  # structure [train] now, so validate catches its mistakes too
        from longlive.train.config import train_config

        checked.task_config = train_config(checked)
        checked.task_config.check(experiment.sampler.frames_per_chunk)
    if experiment.generate is not None:  # open the prompt script and image now, so validate checks them too
        from longlive.inputs import check_generate_inputs

        check_generate_inputs(experiment)
    check_parallel(checked)
    if experiment.run.device == "cpu":  # host RAM is known without torch; a GPU's memory once torch runs
        check_cache_size(checked, "cpu")
    return checked


def check_parallel(checked: CheckedExperiment) -> None:
    """[parallel] sp > 1: a plugin must fill the sequence-layout role, and sp must divide the model's
    heads and a chunk's tokens (checked here, so `validate` catches it without torchrun)."""
    experiment, sp = checked.experiment, checked.experiment.parallel.sp
    if sp == 1:
        return
    providers = [i.plugin_name for i in checked.pm.hook.longlive_make_sequence_layout.get_hookimpls()
                 if i.plugin_name != "core"]
    if not providers:
        raise ConfigError(f"parallel.sp={sp} needs a sequence-layout plugin to split each chunk over {sp} "
                          f"processes; add \"sp_balanced\" to run.plugins (or set parallel.sp = 1)")
    preset = checked.components.get("dit_preset", experiment.model.preset, where="model.preset").value
    codec = checked.components.get("codec", experiment.model.codec, where="model.codec").value
    geometry = experiment_geometry(experiment, codec, preset)
    check_split(sp, num_heads=preset.num_heads, chunk_tokens=geometry.chunk_tokens,
                frames_per_chunk=geometry.frames_per_chunk)


def check_cache_size(checked: CheckedExperiment, device: str) -> None:
    """A KV window no storage could hold on `device` fails here, not at allocation (longlive/memory.py)."""
    experiment = checked.experiment
    if experiment.run.task in ("generate", "bench"):
        from longlive.memory import check_cache_fits

        preset = checked.components.get("dit_preset", experiment.model.preset, where="model.preset").value
        codec = checked.components.get("codec", experiment.model.codec, where="model.codec").value
        check_cache_fits(experiment, preset, codec, device)


def make_run(experiment: Experiment, *, run_dir: Path | None = None, create_dir: bool = True) -> RunContext:
    """Check the experiment, resolve device and dtype, build the device mesh and the sequence layout
    (under torchrun: join the process group), set threads; create the run directory unless told not to."""
    checked = check_experiment(experiment)
    device = resolve_device(experiment.run.device, check_available=create_dir)
    run = RunContext(experiment=experiment, pm=checked.pm, components=checked.components,
                     plugin_configs=checked.plugin_configs, device=device,
                     dtype=resolve_dtype(experiment.run.dtype, device), task_config=checked.task_config)
    run.mesh, run.device = run.hook.longlive_make_device_mesh(parallel=experiment.parallel, device=device, run=run)
    run.layout = run.hook.longlive_make_sequence_layout(mesh=run.mesh, run=run)
    if device.type != "cpu" or experiment.run.device != "cpu":  # an explicit cpu was checked above
        check_cache_size(checked, str(run.device))
    set_threads(experiment.run.threads, run.device, processes=run.mesh.world if run.device.type == "cpu" else 1)
    if create_dir:
        run.run_dir = run_dir or _new_run_dir(experiment)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        if run.mesh.is_writer:  # one TensorBoard log per launch
            run.monitor = Monitor(run.run_dir / "tensorboard")
    return run


def resolve_device(name: str, *, check_available: bool = True) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _DEVICE.match(name):
        raise ConfigError(f"run.device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    device = torch.device(name)
    if check_available and device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {name!r} asked for, but this machine has no CUDA GPU; use cpu or auto")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def set_threads(threads: int, device: torch.device, processes: int = 1) -> int:
    """Set torch's CPU threads: `run.threads`, or 0 = auto (`auto_threads`, shared by the `processes`
    processes of a CPU launch on this host). Returns the count."""
    import torch

    count = threads or max(1, auto_threads() // processes)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    log.info("torch CPU threads: %d%s (device %s)", count, "" if threads else " (auto; run.threads sets it)", device)
    return count


def auto_threads() -> int:
    """The cores this process may use minus the ones busy right now, at least 1.

    "Busy" is the machine's CPU use over 0.2 s (/proc/stat), not the 1-minute load average, which
    still counts a job that ended a minute ago. On a 2-core machine: 2 threads when idle, 1 when
    another job runs. Oversubscribed threads spin against each other: on a busy 2-core machine the
    quickstart took 1,902 s with 2 threads and 186 s with 1; idle, 32.5 s with 2 and 46.4 s with 1
    (docs/benchmarks.md, "CPU threads").
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = busy_cores(os.cpu_count() or cores)
    return max(1, min(cores, (os.cpu_count() or cores) - round(busy)))


def busy_cores(total_cores: int, window: float = 0.2) -> float:
    """Cores in use by any process over `window` seconds (/proc/stat); the load average where that is missing."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    spent = total1 - total0
    return total_cores * (1 - (idle1 - idle0) / spent) if spent > 0 else 0.0


def check_components(experiment: Experiment, components: ComponentRegistry) -> None:
    """Every component the experiment names exists and can be imported here, and the geometry fits."""
    exp = experiment
    named = [("task", exp.run.task, "run.task"), ("dit_preset", exp.model.preset, "model.preset"),
             ("codec", exp.model.codec, "model.codec"), ("text_encoder", exp.model.text_encoder, "model.text_encoder"),
             ("sampler", exp.sampler.name, "sampler.name")]
    named += [("quant_format", getattr(exp.quant, role), f"quant.{role}") for role in ("generator", "teacher", "critic")
              if getattr(exp.quant, role) != "none"]
    for kind, name, where in named:
        components.get(kind, name, where=where).check_requirements(where)
    preset = components.get("dit_preset", exp.model.preset, where="model.preset").value
    codec = components.get("codec", exp.model.codec, where="model.codec").value
    experiment_geometry(exp, codec, preset)
    if codec.latent_channels != preset.in_channels:
        raise ConfigError(f"model.codec: {exp.model.codec!r} makes {codec.latent_channels} latent channels but "
                          f"model.preset {exp.model.preset!r} expects {preset.in_channels}")


def write_run_record(run: RunContext) -> None:
    """The resolved experiment (every default filled in), versions, git commit, device mesh and
    sequence layout; written by the mesh's writer rank only."""
    if run.run_dir is None or not run.mesh.is_writer:
        return
    import torch

    table = experiment_to_table(run.experiment, run.plugin_configs, run.task_config)
    _write_atomic(run.run_dir / "experiment.toml", dumps_toml(table))
    plugins = installed_plugins()
    versions = {
        "longlive": _version("longlive"),
        "torch": torch.__version__,
        "plugins": {n: plugins[n].version if n in plugins else "ad-hoc" for n in run.experiment.run.plugins},
        "git_commit": _git_commit(),
        "device": str(run.device) + (f" ({torch.cuda.get_device_name(run.device)})" if run.device.type == "cuda" else ""),
        "threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = run.run_dir / "versions.json"
    if path.is_file():  # the record at the end of the run keeps when and from which commit it started
        try:
            first = json.loads(path.read_text(encoding="utf-8"))
            versions.update({k: first[k] for k in ("git_commit", "started") if k in first})
        except (OSError, ValueError):
            pass
    if run.quant:
        versions["quant"] = run.quant
    versions["parallel"] = {**run.mesh.describe(), "layout": run.layout.describe()}
    _write_atomic(path, json.dumps(versions, indent=2) + "\n")


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
        if run.mesh.owns_group:
            from longlive.distributed import close_mesh

            close_mesh(run.mesh)
    if run.run_dir is not None and run.mesh.is_writer:
        write_run_record(run)  # the task may have structured its own table meanwhile
        record = {k: v for k, v in result.items() if _is_plain(v)}
        if run.quant:
            record.setdefault("quant", run.quant)
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
    """A fresh `<output_dir>/<name>/<timestamp>[-N]`, created here with an exclusive mkdir, so two
    runs started at once never share one. output_dir is resolved once, against the working directory."""
    base = Path(experiment.run.output_dir).expanduser().resolve() / experiment.run.name
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in range(10_000):
        path = base / (f"{stamp}-{suffix}" if suffix else stamp)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"run.output_dir: 10000 runs named {experiment.run.name!r} started this second in {base}; "
                      f"pass --run-dir")


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
