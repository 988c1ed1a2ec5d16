"""Sweep files and their plan: many variants of one base experiment, each an ordinary run, resumable, collected into one table.

A sweep file has a `[sweep]` table (the base experiment, seeds, overrides shared by every variant,
the metrics to tabulate) and either `[[axes]]` (the variants are the product of the axes' levels)
or `[[variants]]` (an explicit list). A variant adds or removes plugins and applies `--set`
overrides to the base; each (variant, seed) is one `python -m longlive run` in its own run
directory `<sweep dir>/<variant>/seed<N>/`. A run is finished when its `result.json` exists (the
run writes it atomically, last, and only on success); finished runs are skipped on the next call,
failed ones are recorded (`sweep_failure.json`) and tried again. docs/sweeps.md has the format.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import attrs

from longlive.config import load_experiment
from longlive.errors import ConfigError
from longlive.structure import nearest, structure

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")
_TABLES = ("sweep", "axes", "variants")
VARIANT_RECORD, FAILURE_RECORD, RESULT = "sweep_variant.json", "sweep_failure.json", "result.json"


@attrs.frozen(kw_only=True)
class LevelSpec:
    """A `[[variants]]` entry, or one of the `levels` of an axis: what changes from the base."""

    name: str
    note: str = ""  # one line for the report's variant table
    add_plugins: tuple[str, ...] = ()
    remove_plugins: tuple[str, ...] = ()
    set: tuple[str, ...] = ()  # `section.key=value` overrides, as `--set`


@attrs.frozen(kw_only=True)
class AxisSpec:
    """An `[[axes]]` entry: either `key` and `values` (one `--set` key) or `levels` (named changes)."""

    name: str
    key: str | None = None
    values: tuple[Any, ...] = ()
    levels: tuple[LevelSpec, ...] = ()


@attrs.frozen(kw_only=True)
class SweepSettings:
    """The `[sweep]` table."""

    name: str
    base: str  # the base experiment, relative to the sweep file
    seeds: tuple[int, ...] = ()  # run.seed of every variant; empty: the base's seed only
    set: tuple[str, ...] = ()  # overrides for every variant, applied before the variant's own
    metrics: tuple[str, ...] = ()  # dotted result.json keys for the table; empty: every number found
    time_metrics: tuple[str, ...] = ("seconds", "fps")  # wall-clock metrics, marked as such in the table
    output_dir: str = "runs/sweeps"  # the sweep dir is <output_dir>/<name>/ (relative to the working dir)
    report: str | None = None  # also write the finished table here (relative to the sweep file)
    title: str = ""  # the report's heading
    description: str = ""  # the report's first paragraph


@attrs.frozen(kw_only=True)
class SweepFile:
    sweep: SweepSettings
    axes: tuple[AxisSpec, ...] = ()
    variants: tuple[LevelSpec, ...] = ()


@attrs.frozen(kw_only=True)
class PlannedRun:
    """One (variant, seed): an ordinary run of the base experiment with `overrides`."""

    variant: str
    seed: int
    levels: tuple[tuple[str, str], ...]  # (axis, level) pairs of a product sweep; () for a list
    changes: str  # the variant's changes from the base, for the report
    note: str
    overrides: tuple[str, ...]
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.variant}/seed{self.seed}"

    def record(self, base: Path) -> dict:
        """What defines this run; a finished run is reused only if its record matches."""
        return {"variant": self.variant, "seed": self.seed, "base": str(base), "overrides": list(self.overrides)}


@attrs.frozen(kw_only=True)
class Sweep:
    source: Path
    settings: SweepSettings
    base: Path
    sweep_dir: Path
    runs: tuple[PlannedRun, ...]
    axes: tuple[str, ...]  # axis names (product sweeps), the table's level columns


def load_sweep(path: str | Path, overrides: Sequence[str] = (), sweep_dir: Path | None = None) -> Sweep:
    """Read the sweep file, plan every run and validate each one as `longlive validate` would."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    spec = _structure_sweep_file(table)
    settings = spec.sweep
    base = (path.parent / settings.base).resolve()
    if not base.is_file():
        raise ConfigError(f"sweep.base: experiment {settings.base!r} does not exist (looked for {base}); "
                          f"the path is relative to the sweep file")
    common = [*settings.set, *overrides]
    for item in common:
        _check_override(item, "sweep.set / --set", seeds=settings.seeds)
    try:
        base_exp = load_experiment(base, common)
    except ConfigError as e:
        raise ConfigError(f"sweep.base {settings.base!r} (with sweep.set and --set): {e}") from None
    levels = _variant_levels(spec)
    sweep_dir = sweep_dir or Path(settings.output_dir) / settings.name
    seeds = settings.seeds or (base_exp.run.seed,)
    runs = []
    for chosen in levels:
        name = "+".join(level.name for _, level in chosen)
        plugins = _plugins_of(name, chosen, base_exp)
        own = [item for _, level in chosen for item in level.set]
        for seed in seeds:
            extra = [f"run.plugins={json.dumps(plugins)}"] if plugins != list(base_exp.run.plugins) else []
            extra += [f"run.seed={seed}"] if settings.seeds else []
            runs.append(PlannedRun(
                variant=name, seed=seed, levels=tuple((axis, level.name) for axis, level in chosen if axis),
                changes=_describe_changes(chosen), note="; ".join(level.note for _, level in chosen if level.note),
                overrides=tuple(common + own + extra), run_dir=sweep_dir / name / f"seed{seed}"))
    sweep = Sweep(source=path, settings=settings, base=base, sweep_dir=sweep_dir, runs=tuple(runs),
                  axes=tuple(a.name for a in spec.axes))
    validate_runs(sweep)
    return sweep


def _structure_sweep_file(table: dict) -> SweepFile:
    for key in table:
        if key not in _TABLES:
            raise ConfigError(f"{key}: unknown table{nearest(key, _TABLES)}; valid tables: [sweep], [[axes]], "
                              f"[[variants]]")
    if "sweep" not in table:
        raise ConfigError("sweep: missing table [sweep]; it needs at least name = \"...\" and base = \"experiment.toml\"")
    spec = structure(table, SweepFile, where="")
    if bool(spec.axes) == bool(spec.variants):
        raise ConfigError("sweep: give either [[axes]] (the product of their levels) or [[variants]] (a list), "
                          "not both and not neither")
    _check_names("variants", [v.name for v in spec.variants])
    _check_names("axes", [a.name for a in spec.axes])
    for i, axis in enumerate(spec.axes):
        where = f"axes[{i}] ({axis.name})"
        if (axis.key is None) == (not axis.levels):
            raise ConfigError(f"{where}: give either key = \"section.key\" with values = [...], or [[axes.levels]]")
        if axis.key is not None and not axis.values:
            raise ConfigError(f"{where}.values: an axis with key = {axis.key!r} needs values = [...]")
        if axis.levels and axis.values:
            raise ConfigError(f"{where}.values: values go with key = \"section.key\"; with [[axes.levels]] "
                              f"each level has its own set = [...]")
        for value in axis.values:
            if isinstance(value, (dict, list)):
                raise ConfigError(f"{where}.values: {value!r} is not a scalar; use [[axes.levels]] with set = [...]")
        _check_names(f"{where}.levels", [level.name for level in _axis_levels(axis)])
    for item in (*spec.variants, *(level for axis in spec.axes for level in axis.levels)):
        for override in item.set:
            _check_override(override, f"variant {item.name!r}: set", seeds=(0,))  # a variant never sets the seed
    if len(set(spec.sweep.seeds)) != len(spec.sweep.seeds):
        raise ConfigError(f"sweep.seeds: lists a seed twice: {list(spec.sweep.seeds)}")
    if any(s < 0 for s in spec.sweep.seeds):
        raise ConfigError(f"sweep.seeds: seeds are >= 0, found {list(spec.sweep.seeds)}")
    if not _NAME.fullmatch(spec.sweep.name):
        raise ConfigError(f"sweep.name: {spec.sweep.name!r} is not a folder name; use letters, digits and _.=+-")
    return spec


def _check_names(where: str, names: list[str]) -> None:
    for name in names:
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: name {name!r} is not a folder name; use letters, digits and _.=+- "
                              f"(no spaces or slashes), starting with a letter or digit")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{where}: name {repeated[0]!r} is used twice; every name must be unique")


def _check_override(item: str, where: str, *, seeds: tuple[int, ...]) -> None:
    key = item.partition("=")[0].strip()
    if key == "run.plugins":
        raise ConfigError(f"{where}: {item!r}: change plugins with add_plugins / remove_plugins, not run.plugins")
    if key == "run.seed" and seeds:
        raise ConfigError(f"{where}: {item!r}: the seeds come from sweep.seeds = [...]; remove this override")


def _axis_levels(axis: AxisSpec) -> tuple[LevelSpec, ...]:
    if axis.key is None:
        return axis.levels
    return tuple(LevelSpec(name=f"{axis.name}={_value_name(v)}", set=(f"{axis.key}={json.dumps(v)}",))
                 for v in axis.values)


def _value_name(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _variant_levels(spec: SweepFile) -> list[tuple[tuple[str, LevelSpec], ...]]:
    """Each variant as its (axis name, level) pairs; a list sweep's variants have the axis name ''."""
    if spec.variants:
        return [(("", v),) for v in spec.variants]
    return [tuple(zip((a.name for a in spec.axes), combo))
            for combo in itertools.product(*(_axis_levels(a) for a in spec.axes))]


def _plugins_of(variant: str, chosen: tuple[tuple[str, LevelSpec], ...], base_exp) -> list[str]:
    plugins = list(base_exp.run.plugins)
    for _, level in chosen:
        for name in level.remove_plugins:
            if name not in plugins:
                raise ConfigError(f"variant {variant!r}: remove_plugins: {name!r} is not in the base's run.plugins "
                                  f"{list(base_exp.run.plugins)} (or another level removed it already)")
            if name in base_exp.plugins:
                raise ConfigError(f"variant {variant!r}: remove_plugins: the base experiment has a [plugins.{name}] "
                                  f"table, which --set cannot remove; move that table's settings into the set = [...] "
                                  f"of the variants that add {name!r}")
            plugins.remove(name)
        for name in level.add_plugins:
            if name in plugins:
                raise ConfigError(f"variant {variant!r}: add_plugins: {name!r} is already enabled")
            plugins.append(name)
    return plugins


def _describe_changes(chosen: tuple[tuple[str, LevelSpec], ...]) -> str:
    parts = []
    for _, level in chosen:
        parts += [f"+{p}" for p in level.add_plugins] + [f"-{p}" for p in level.remove_plugins] + list(level.set)
    return ", ".join(parts)


def validate_runs(sweep: Sweep) -> None:
    """Load and check every planned run (as `longlive validate`), before anything runs."""
    from longlive.run import check_experiment

    for planned in sweep.runs:
        try:
            check_experiment(load_experiment(sweep.base, list(planned.overrides)))
        except ConfigError as e:
            raise ConfigError(f"sweep variant {planned.label}: {e}") from None


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or unreadable (a record of an interrupted write)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
