"""The run context: torch's CPU threads (run.threads, auto) and the log of progress lines."""
from __future__ import annotations

import logging
import os

import pytest
import torch

from longlive import run as run_module
from longlive.monitor import PROGRESS_LOGGER, progress, progress_line


@pytest.mark.parametrize("cores,busy,expected", [(2, 0.1, 2), (2, 1.2, 1), (2, 7.0, 1), (16, 3.4, 13)])
def test_auto_threads_leave_busy_cores_alone(monkeypatch, cores, busy, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(run_module, "busy_cores", lambda total: busy)
    assert run_module.auto_threads() == expected


def test_busy_cores_reads_the_machine_now():
    busy = run_module.busy_cores(os.cpu_count() or 1, window=0.05)
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6


def test_run_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert run_module.set_threads(1, torch.device("cpu")) == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(run_module, "auto_threads", lambda: 2)
        assert run_module.set_threads(0, torch.device("cpu")) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_progress_logs_rate_and_eta(caplog):
    assert progress_line("chunks", 12, 48, 4.0, "chunk") == "chunks 12/48 (25%), 3.00 chunk/s, elapsed 0:00:04, ETA 0:00:12"
    assert progress_line("train", 5, None, 2.5, "step") == "train 5, 2.00 step/s, elapsed 0:00:02"
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        assert list(progress(range(3), desc="chunks", unit="chunk", every_seconds=0.0)) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert len(lines) == 3 and lines[-1].startswith("chunks 3/3 (100%), ")
