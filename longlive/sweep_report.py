"""A sweep's results: each run's result.json numbers, mean and spread over seeds, as markdown, CSV and TensorBoard hparams."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from longlive.monitor import Monitor, numeric_leaves
from longlive.sweep_plan import RESULT, VARIANT_RECORD, read_json, write_text_atomic

if TYPE_CHECKING:
    from longlive.sweep_plan import PlannedRun, Sweep

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class Stat:
    """One metric of one variant over its finished seeds; `std` is the sample standard deviation (n >= 2)."""

    mean: float
    std: float | None
    n: int


@attrs.frozen(kw_only=True)
class VariantRow:
    variant: str
    levels: tuple[tuple[str, str], ...]
    changes: str
    note: str
    seeds: tuple[int, ...]  # planned
    finished: tuple[int, ...]
    failed: tuple[int, ...]
    stats: dict[str, Stat]


def collect(sweep: Sweep, statuses: dict[str, str]) -> dict[str, dict[str, float]]:
    """label -> the numbers of its result.json (dotted keys), for every finished run."""
    numbers = {}
    for planned in sweep.runs:
        if statuses[planned.label] == "finished":
            record = json.loads((planned.run_dir / RESULT).read_text(encoding="utf-8"))
            numbers[planned.label] = numeric_leaves(record)
    return numbers


def metric_names(sweep: Sweep, numbers: dict[str, dict[str, float]]) -> list[str]:
    """The table's columns: sweep.metrics, or every number any run reported (in first-seen order)."""
    from longlive.structure import nearest

    found = list(dict.fromkeys(k for values in numbers.values() for k in values))
    if not sweep.settings.metrics:
        return found
    for name in sweep.settings.metrics:
        if numbers and name not in found:
            log.warning("sweep.metrics: %r is in no finished run's result.json%s", name, nearest(name, found))
    return list(sweep.settings.metrics)


def aggregate(sweep: Sweep, statuses: dict[str, str], numbers: dict[str, dict[str, float]],
              metrics: list[str]) -> list[VariantRow]:
    by_variant: dict[str, list[PlannedRun]] = {}
    for planned in sweep.runs:
        by_variant.setdefault(planned.variant, []).append(planned)
    rows = []
    for variant, runs in by_variant.items():
        done = [p for p in runs if statuses[p.label] == "finished"]
        stats = {}
        for metric in metrics:
            values = [numbers[p.label][metric] for p in done if metric in numbers[p.label]]
            values = [v for v in values if not math.isnan(v)]
            if values:
                stats[metric] = Stat(mean=statistics.fmean(values), n=len(values),
                                     std=statistics.stdev(values) if len(values) > 1 else None)
        first = runs[0]
        rows.append(VariantRow(variant=variant, levels=first.levels, changes=first.changes, note=first.note,
                               seeds=tuple(p.seed for p in runs), finished=tuple(p.seed for p in done),
                               failed=tuple(p.seed for p in runs if statuses[p.label] == "failed"), stats=stats))
    return rows


def _decimals(x: float) -> int:
    return 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 3


def format_stat(stat: Stat | None) -> str:
    """`mean` or `mean ± std`, both to the decimals the mean's size calls for."""
    if stat is None:
        return "n/a"
    d = _decimals(stat.mean)
    return f"{stat.mean:.{d}f}" if stat.std is None else f"{stat.mean:.{d}f} ± {stat.std:.{d}f}"


def _seeds_cell(row: VariantRow) -> str:
    cell = f"{len(row.finished)}/{len(row.seeds)}"
    return cell + (f" ({len(row.failed)} failed)" if row.failed else "")


def results_table(sweep: Sweep, rows: list[VariantRow], metrics: list[str]) -> list[str]:
    """The markdown table: one row per variant, one column per axis and per metric (time metrics marked †)."""
    heads = ["variant", *sweep.axes, "seeds", *(f"{m} †" if m in sweep.settings.time_metrics else m
                                               for m in metrics)]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in rows:
        levels = dict(row.levels)
        cells = [row.variant, *(levels.get(a, "") for a in sweep.axes), _seeds_cell(row),
                 *(format_stat(row.stats.get(m)) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def variants_table(rows: list[VariantRow]) -> list[str]:
    with_notes = any(r.note for r in rows)
    lines = ["| variant | changes from the base |" + (" what |" if with_notes else ""),
             "|---|---|" + ("---|" if with_notes else "")]
    for row in rows:
        changes = f"`{row.changes}`".replace("|", "\\|") if row.changes else "none: the base"
        lines.append(f"| {row.variant} | {changes} |" + (f" {row.note} |" if with_notes else ""))
    return lines


def notes(sweep: Sweep, rows: list[VariantRow], metrics: list[str]) -> list[str]:
    out = []
    seeds = max(len(r.seeds) for r in rows)
    if seeds > 1:
        out.append(f"- `mean ± spread` over seeds: the spread is the sample standard deviation over the finished "
                   f"seeds (the `seeds` column: finished / planned); one seed shows the value alone.")
    else:
        out.append("- One seed per variant: the seed-to-seed spread is not measured here, so small differences "
                   "may be noise; add seeds (sweep.seeds) to see it.")
    if any(m in sweep.settings.time_metrics for m in metrics):
        cores = os.cpu_count()
        how = [read_json(p.run_dir / VARIANT_RECORD) or {} for p in sweep.runs if (p.run_dir / RESULT).is_file()]
        jobs = max((h.get("jobs", 1) for h in how), default=1)
        if any(h.get("shared_machine", True) for h in how):
            own = f"; this sweep ran {jobs} runs at a time" if jobs > 1 else ""
            out.append(f"- † wall-clock, measured on a shared machine ({cores} CPU cores; other processes ran at the "
                       f"same time{own}): load moves it, so it is not a speed measurement.")
        else:
            out.append(f"- † wall-clock, measured one run at a time with nothing else running ({cores} CPU cores).")
    failed = [f"{r.variant}/seed{s}" for r in rows for s in r.failed]
    if failed:
        out.append(f"- Failed (see each run's `sweep_failure.json`): {', '.join(failed)}.")
    return out


def write_csvs(sweep: Sweep, rows: list[VariantRow], statuses: dict[str, str],
               numbers: dict[str, dict[str, float]], metrics: list[str]) -> None:
    """results.csv: one row per variant (mean, std, n per metric); runs.csv: one row per run."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["variant", *sweep.axes, "seeds_planned", "seeds_finished",
                     *(f"{m}{suffix}" for m in metrics for suffix in ("", "_std", "_n"))])
    for row in rows:
        levels = dict(row.levels)
        cells = [row.variant, *(levels.get(a, "") for a in sweep.axes), len(row.seeds), len(row.finished)]
        for m in metrics:
            stat = row.stats.get(m)
            cells += ["", "", 0] if stat is None else [stat.mean, "" if stat.std is None else stat.std, stat.n]
        writer.writerow(cells)
    write_text_atomic(sweep.sweep_dir / "results.csv", out.getvalue())
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["variant", *sweep.axes, "seed", "status", "run_dir", *metrics])
    for planned in sweep.runs:
        levels, values = dict(planned.levels), numbers.get(planned.label, {})
        writer.writerow([planned.variant, *(levels.get(a, "") for a in sweep.axes), planned.seed,
                         statuses[planned.label], str(planned.run_dir), *(values.get(m, "") for m in metrics)])
    write_text_atomic(sweep.sweep_dir / "runs.csv", out.getvalue())


def write_hparams(sweep: Sweep, numbers: dict[str, dict[str, float]], metrics: list[str]) -> Path:
    """<sweep dir>/tensorboard/<variant>/seed<N>/: one hparams session per finished run (rebuilt every call)."""
    root = sweep.sweep_dir / "tensorboard"
    if root.exists():
        shutil.rmtree(root)
    for planned in sweep.runs:
        if planned.label not in numbers:
            continue
        monitor = Monitor(root / planned.variant / f"seed{planned.seed}")
        hparams = {"variant": planned.variant, "seed": planned.seed, **dict(planned.levels)}
        monitor.hparams(hparams, {m: numbers[planned.label][m] for m in metrics if m in numbers[planned.label]})
        monitor.close()
    return root


def write_tables(sweep: Sweep, statuses: dict[str, str], *, command: str) -> str:
    """Write results.md, results.csv, runs.csv and the hparams view; the report too once every run finished.

    Returns the markdown table and its notes (what the command prints).
    """
    numbers = collect(sweep, statuses)
    metrics = metric_names(sweep, numbers)
    rows = aggregate(sweep, statuses, numbers, metrics)
    table = results_table(sweep, rows, metrics) + [""] + notes(sweep, rows, metrics)
    text = "\n".join(table) + "\n"
    write_text_atomic(sweep.sweep_dir / "results.md", _document(sweep, rows, table, command, numbers))
    write_csvs(sweep, rows, statuses, numbers, metrics)
    write_hparams(sweep, numbers, metrics)
    unfinished = sum(1 for s in statuses.values() if s != "finished")
    if sweep.settings.report is not None:
        report = (sweep.source.parent / sweep.settings.report).resolve()
        if unfinished:
            log.warning("sweep: %d runs unfinished; the report %s is written only when all have finished",
                        unfinished, report)
        else:
            write_text_atomic(report, _document(sweep, rows, table, command, numbers))
            log.info("sweep: wrote the report %s", report)
    return text


def _document(sweep: Sweep, rows: list[VariantRow], table: list[str], command: str,
              numbers: dict[str, dict[str, float]]) -> str:
    s = sweep.settings
    runs = len(sweep.runs)
    lines = [f"# {s.title or 'Sweep ' + s.name}", "",
             f"Generated by `{command}` on {time.strftime('%Y-%m-%d')} ({_where(sweep, numbers)}): "
             f"{len(rows)} variants, {runs} runs of the base experiment `{_relative(sweep.base)}`; "
             f"sweep file `{_relative(sweep.source)}`. Do not edit by hand: re-run the command.", ""]
    if s.description:
        lines += [s.description.strip(), ""]
    lines += ["## Variants", "", *variants_table(rows), "", "## Results", "", *table]
    return "\n".join(lines) + "\n"


def _where(sweep: Sweep, numbers: dict[str, dict[str, float]]) -> str:
    """Device and git commit, from the first finished run's versions.json."""
    for planned in sweep.runs:
        path = planned.run_dir / "versions.json"
        if planned.label in numbers and path.is_file():
            versions = json.loads(path.read_text(encoding="utf-8"))
            return f"device {versions.get('device', '?')}, {os.cpu_count()} CPU cores, git commit " \
                   f"{str(versions.get('git_commit', '?'))[:10]}"
    return f"{os.cpu_count()} CPU cores"


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
