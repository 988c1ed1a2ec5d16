"""Puts this folder on sys.path, so test_teacher.py shares test_ulysses.py's torchrun launcher."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
