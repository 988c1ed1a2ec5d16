"""`longlive sweep`: run a sweep's planned runs as subprocesses (resumable, in parallel) and tabulate them.

The sweep file and its plan are in longlive/sweep_plan.py, the tables in longlive/sweep_report.py,
the format in docs/sweeps.md.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from longlive.errors import ConfigError
from longlive.sweep_plan import (FAILURE_RECORD, RESULT, VARIANT_RECORD, PlannedRun, Sweep, load_sweep,
                                 read_json, write_json_atomic, write_text_atomic)
from longlive.sweep_report import write_tables

log = logging.getLogger(__name__)


def run_sweep(path: Path, *, overrides: list[str], sweep_dir: Path | None, jobs: int, dry_run: bool,
              shared_machine: bool, command: str) -> tuple[int, str]:
    """Validate every run, then run the unfinished ones; returns (exit code, text to print)."""
    if jobs < 1:
        raise ConfigError(f"--jobs: {jobs} is not a number of parallel runs; use 1 or more")
    if not shared_machine and jobs > 1:
        raise ConfigError(f"--dedicated: {jobs} jobs share the machine with each other; use --jobs 1 with --dedicated")
    sweep = load_sweep(path, overrides, sweep_dir)
    statuses = {p.label: run_status(sweep, p) for p in sweep.runs}
    if dry_run:
        return 0, format_plan(sweep, statuses)
    todo = [p for p in sweep.runs if statuses[p.label] != "finished"]
    log.info("sweep %s: %d runs, %d finished before, %d to run (%d at a time) in %s", sweep.settings.name,
             len(sweep.runs), len(sweep.runs) - len(todo), len(todo), jobs, sweep.sweep_dir)
    write_text_atomic(sweep.sweep_dir / "sweep.toml", sweep.source.read_text(encoding="utf-8"))
    try:
        statuses.update(execute(sweep, todo, jobs=jobs, shared_machine=shared_machine))
    except KeyboardInterrupt:  # tabulate what finished before the interrupt
        statuses = {p.label: run_status(sweep, p) for p in sweep.runs}
        write_tables(sweep, statuses, command=command)
        raise
    text = write_tables(sweep, statuses, command=command)
    unfinished = [label for label, status in statuses.items() if status != "finished"]
    footer = (f"\nall {len(statuses)} runs finished" if not unfinished else
              f"\n{len(unfinished)} of {len(statuses)} runs failed: {', '.join(unfinished)}; run the command again "
              f"to retry them (finished runs are kept)")
    return (1 if unfinished else 0), f"{text}{footer}; tables in {sweep.sweep_dir}\n"


def format_plan(sweep: Sweep, statuses: dict[str, str]) -> str:
    variants = len(dict.fromkeys(p.variant for p in sweep.runs))
    lines = [f"sweep {sweep.settings.name}: {variants} variants, {len(sweep.runs)} runs of {sweep.base}, "
             f"all valid; sweep dir {sweep.sweep_dir}"]
    width = max(len(p.label) for p in sweep.runs)
    for p in sweep.runs:
        lines.append(f"  {p.label:<{width}}  {statuses[p.label]:<8}  {p.changes or 'the base'}")
    return "\n".join(lines) + "\n"


def run_status(sweep: Sweep, planned: PlannedRun) -> str:
    """finished | failed (last attempt failed) | pending; a finished run of another definition is an error."""
    if (planned.run_dir / RESULT).is_file():
        recorded = read_json(planned.run_dir / VARIANT_RECORD) or {}
        definition = planned.record(sweep.base)
        recorded = {k: v for k, v in recorded.items() if k in definition}
        if recorded != definition:
            raise ConfigError(f"sweep dir {planned.run_dir} holds a finished run of another definition "
                              f"(recorded {recorded}); delete that folder, or give the sweep another "
                              f"sweep.name or --sweep-dir")
        return "finished"
    return "failed" if (planned.run_dir / FAILURE_RECORD).is_file() else "pending"


def execute(sweep: Sweep, todo: list[PlannedRun], *, jobs: int, shared_machine: bool = True,
            poll_s: float = 0.2) -> dict[str, str]:
    """Run `todo` as subprocesses, at most `jobs` at a time; returns label -> finished | failed.

    Each run records its definition, and how it ran (`jobs`, `shared_machine`) for the table's notes.
    """
    outcome: dict[str, str] = {}
    queue = list(todo)
    active: list[tuple[PlannedRun, subprocess.Popen, Any, float]] = []
    try:
        while queue or active:
            while queue and len(active) < jobs:
                planned = queue.pop(0)
                active.append(_start(sweep, planned, {"jobs": jobs, "shared_machine": shared_machine}))
                log.info("sweep: started %s (%d running, %d waiting)", planned.label, len(active), len(queue))
            time.sleep(poll_s)
            for item in [a for a in active if a[1].poll() is not None]:
                active.remove(item)
                planned, proc, output, started = item
                output.close()
                outcome[planned.label] = _finish(planned, proc.returncode, time.perf_counter() - started)
    finally:
        for planned, proc, output, _ in active:  # interrupted: stop the runs this call started
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            output.close()
            log.warning("sweep: stopped %s (unfinished; it runs again on the next call)", planned.label)
    return outcome


def _start(sweep: Sweep, planned: PlannedRun, how: dict) -> tuple[PlannedRun, subprocess.Popen, Any, float]:
    if planned.run_dir.exists():  # an unfinished or failed earlier attempt: start clean
        shutil.rmtree(planned.run_dir)
    planned.run_dir.mkdir(parents=True)
    write_json_atomic(planned.run_dir / VARIANT_RECORD, {**planned.record(sweep.base), **how})
    command = [sys.executable, "-m", "longlive", "run", str(sweep.base), "--run-dir", str(planned.run_dir)]
    for item in planned.overrides:
        command += ["--set", item]
    output = open(planned.run_dir / "sweep_output.txt", "w", encoding="utf-8")
    proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return planned, proc, output, time.perf_counter()


def _finish(planned: PlannedRun, returncode: int, seconds: float) -> str:
    if returncode == 0 and (planned.run_dir / RESULT).is_file():
        log.info("sweep: finished %s in %.0f s", planned.label, seconds)
        return "finished"
    text = (planned.run_dir / "sweep_output.txt").read_text(encoding="utf-8", errors="replace")
    tail = text.strip().splitlines()[-20:]
    write_json_atomic(planned.run_dir / FAILURE_RECORD, {"returncode": returncode, "output_tail": tail})
    log.warning("sweep: %s failed (exit code %d): %s (full output: %s)", planned.label, returncode,
                tail[-1] if tail else "no output", planned.run_dir / "sweep_output.txt")
    return "failed"
